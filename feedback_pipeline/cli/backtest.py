"""``backtest``: replay the retraining policy and its baselines over history."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from feedback_pipeline.backtest.replay import EXPERIMENT, BacktestPlan, backtest_into
from feedback_pipeline.cli._common import duration
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import load_settings, parse_as_of
from feedback_pipeline.warehouse import summaries as reporting


def _backtest(args: argparse.Namespace) -> int:
    """Replay the retraining policy and its baselines; print them side by side."""
    settings = load_settings(args.settings)
    plan = BacktestPlan(parse_as_of(args.start), parse_as_of(args.end), args.every)
    summary, run_id = backtest_into(
        args.out or (args.data_dir / "backtest"),
        args.data_dir / "warehouse.duckdb",
        args.landing,
        local_registry(args.data_dir, experiment=EXPERIMENT),
        settings,
        plan,
        (lambda message: print(message, file=sys.stderr)) if args.json else print,
    )
    if args.json:
        print(json.dumps(summary.as_dict(), default=float))
    else:
        print(f"\nBacktest {summary.backtest_id}: prequential metrics on the common periods\n")
        print(reporting.markdown(summary.overall))
        print("\nThe policy against each baseline on the same predictions (McNemar's exact test)\n")
        print(reporting.markdown(summary.paired))
        print(f"\nPlot: {summary.plot_path}; MLflow run {run_id} in experiment {EXPERIMENT}")
    return 0


def add_backtest(commands: argparse._SubParsersAction) -> None:
    backtest = commands.add_parser(
        "backtest", help="replay the retraining policy over history, with its baselines"
    )
    backtest.add_argument("--start", required=True, help="first period start (ISO-8601, UTC)")
    backtest.add_argument("--end", required=True, help="end of the last period (ISO-8601, UTC)")
    backtest.add_argument("--every", type=duration, default=timedelta(days=7), help="e.g. 7d")
    backtest.add_argument("--settings", type=Path, default=None, help="a settings YAML file")
    backtest.add_argument(
        "--landing",
        type=Path,
        default=None,
        help="ingest these landing files into the backtest's own warehouse (default: copy the "
        "raw tables of DATA/warehouse.duckdb)",
    )
    backtest.add_argument("--out", type=Path, default=None, help="default: DATA/backtest")
    backtest.add_argument("--json", action="store_true", help="print the summary as JSON")
    backtest.set_defaults(handler=_backtest)
