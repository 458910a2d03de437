"""``feedback-pipeline``: simulate landing data and inspect the warehouse."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from feedback_pipeline import reporting, warehouse
from feedback_pipeline.labeling import orphan_feedback_count
from feedback_pipeline.settings import default_data_dir
from feedback_pipeline.simulator import SimulationConfig, simulate


def _simulate(args: argparse.Namespace) -> int:
    config = SimulationConfig(
        start=args.start,
        days=args.days,
        predictions_per_day=args.predictions_per_day,
        baseline_per_day=args.baseline_per_day,
        seed=args.seed,
        bad_rate=args.bad_rate,
        file_format=args.format,
    )
    landing = args.out or (args.data_dir / "landing")
    summary = simulate(landing, config)
    print(
        f"wrote {len(summary.files)} files to {landing}: {summary.predictions:,} predictions, "
        f"{summary.feedback_events:,} feedback events, {summary.baseline_examples:,} baseline "
        f"examples, {summary.bad_records:,} bad records"
    )
    return 0


def print_status(data_dir: Path) -> int:
    """Counts per table, rejects by reason, labels by source and environment, feedback counts."""
    path = data_dir / "warehouse.duckdb"
    if not path.exists():
        print(f"no warehouse at {path} yet: run `make demo` or the ingest_job first")
        return 1
    con = warehouse.connect(path, read_only=True)
    try:
        sections = [
            ("Tables", reporting.table_counts(con)),
            ("Rejected records by reason", reporting.rejects_by_reason(con)),
            ("Labels by source and environment", reporting.labels_by_source_and_environment(con)),
            ("Feedback events", reporting.feedback_counts(con)),
        ]
        orphans = orphan_feedback_count(con)
    finally:
        con.close()
    print(f"warehouse: {path}\n")
    for title, frame in sections:
        print(f"## {title}\n\n{reporting.markdown(frame, max_rows=40)}\n")
    print(f"orphan feedback events (prediction not landed yet): {orphans}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-pipeline", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $FEEDBACK_PIPELINE_DATA_DIR or ./data)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="write synthetic landing files")
    sim.add_argument("--out", type=Path, default=None, help="landing dir (default: DATA/landing)")
    sim.add_argument("--start", type=date.fromisoformat, default=SimulationConfig.start)
    sim.add_argument("--days", type=int, default=SimulationConfig.days)
    sim.add_argument(
        "--predictions-per-day", type=int, default=SimulationConfig.predictions_per_day
    )
    sim.add_argument("--baseline-per-day", type=int, default=SimulationConfig.baseline_per_day)
    sim.add_argument("--seed", type=int, default=SimulationConfig.seed)
    sim.add_argument("--bad-rate", type=float, default=SimulationConfig.bad_rate)
    sim.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    sim.set_defaults(handler=_simulate)

    status = commands.add_parser("status", help="what is in the warehouse")
    status.set_defaults(handler=lambda args: print_status(args.data_dir))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_dir = (args.data_dir or default_data_dir()).resolve()
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
