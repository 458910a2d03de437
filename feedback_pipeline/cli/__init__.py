"""``feedback-pipeline``: simulate landing data, inspect the warehouse, move the champion,
backtest the retraining policy, read the feedback (stats, A/B) and manage the serving policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

from feedback_pipeline.cli import analytics, backtest, data, models, policy, quarantine, serving
from feedback_pipeline.promotion.lock import PromotionLockTimeout
from feedback_pipeline.registry.model_registry import RegistryUnavailable
from feedback_pipeline.settings import SettingsError, default_data_dir

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-pipeline", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $FEEDBACK_PIPELINE_DATA_DIR or ./data)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # In this order in --help.
    data.add_simulate(commands)
    models.add_status(commands)
    models.add_rollback(commands)
    quarantine.add_quarantine(commands)
    data.add_stream(commands)
    backtest.add_backtest(commands)
    analytics.add_stats(commands)
    analytics.add_ab(commands)
    policy.add_policy(commands)
    serving.add_predict(commands)
    serving.add_serve(commands)
    models.add_promote(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_dir = (args.data_dir or default_data_dir()).resolve()
    try:
        return args.handler(args)
    except (ValueError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RegistryUnavailable, PromotionLockTimeout) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except duckdb.IOException as error:
        print(
            f"error: the warehouse in {args.data_dir} is busy or unreadable ({error}). "
            "Another process (a Dagster run, `make dev`) holds its write lock: wait for the run "
            "to finish, or stop that process, then retry.",
            file=sys.stderr,
        )
        return 3
