"""Landing data: ``simulate`` (the synthetic stream) and ``stream`` (a public benchmark)."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from feedback_pipeline.simulator import SimulationConfig, simulate
from feedback_pipeline.simulator.public_streams import (
    STREAMS,
    StreamSourceError,
    write_stream_landing,
)


def _simulate(args: argparse.Namespace) -> int:
    config = SimulationConfig(
        start=args.start,
        days=args.days,
        predictions_per_day=args.predictions_per_day,
        baseline_per_day=args.baseline_per_day,
        seed=args.seed,
        bad_rate=args.bad_rate,
        file_format=args.format,
        label_noise_day=args.label_noise_day,
        label_noise=args.label_noise,
        feature_outage_day=args.feature_outage_day,
        feature_outage=args.feature_outage,
        feature_outage_mode=args.feature_outage_mode,
        class_burst_day=args.class_burst_day,
        class_burst_label=args.class_burst_label,
        class_burst_mode=args.class_burst_mode,
        episode_days=args.episode_days,
    )
    landing = args.out or (args.data_dir / "landing")
    summary = simulate(landing, config)
    print(
        f"wrote {len(summary.files)} files to {landing}: {summary.predictions:,} predictions, "
        f"{summary.feedback_events:,} feedback events, {summary.baseline_examples:,} baseline "
        f"examples, {summary.bad_records:,} bad records"
    )
    return 0


def _stream(args: argparse.Namespace) -> int:
    landing = args.out or (args.data_dir / "landing")
    stream = STREAMS[args.name]
    try:
        summary = write_stream_landing(args.name, landing, args.cache, args.limit_rows)
    except StreamSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary.files} files to {landing}: {summary.predictions:,} predictions of "
        f"{args.name} {summary.first_prediction:%Y-%m-%d %H:%M} .. "
        f"{summary.last_prediction:%Y-%m-%d %H:%M}, {stream.rows_per_day:,} a day, each with "
        f"its outcome {stream.label_delay.days} day(s) later"
    )
    return 0


def add_simulate(commands: argparse._SubParsersAction) -> None:
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
    stress = sim.add_argument_group(
        "stress episodes", "weeks a gate must block (each off unless its day is given)"
    )
    stress.add_argument(
        "--label-noise-day", type=int, default=None, help="feedback wrong from this day"
    )
    stress.add_argument("--label-noise", choices=["flipped", "random"], default="flipped")
    stress.add_argument(
        "--feature-outage-day", type=int, default=None, help="a feature feed breaks this day"
    )
    stress.add_argument("--feature-outage", default=SimulationConfig.feature_outage)
    stress.add_argument("--feature-outage-mode", choices=["missing", "constant"], default="missing")
    stress.add_argument(
        "--class-burst-day", type=int, default=None, help="almost all of one class from here"
    )
    stress.add_argument("--class-burst-label", type=int, choices=[0, 1], default=0)
    stress.add_argument(
        "--class-burst-mode",
        choices=["world", "feedback"],
        default="world",
        help="world: the predictions are of that class; feedback: only they get feedback",
    )
    stress.add_argument(
        "--episode-days", type=int, default=SimulationConfig.episode_days, help="each one's length"
    )
    sim.set_defaults(handler=_simulate)


def add_stream(commands: argparse._SubParsersAction) -> None:
    streams = commands.add_parser(
        "stream", help="write a public drifting-stream benchmark as landing files"
    )
    streams.add_argument(
        "name",
        choices=list(STREAMS),
        help="; ".join(f"{s.name}: {s.description}" for s in STREAMS.values()).replace("%", "%%"),
    )
    streams.add_argument(
        "--out", type=Path, default=None, help="landing dir (default: DATA/landing)"
    )
    streams.add_argument("--limit-rows", type=int, default=None, help="only the first N rows")
    streams.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where downloaded sources are kept (default: $FEEDBACK_PIPELINE_STREAM_CACHE or "
        "~/.cache/feedback_pipeline)",
    )
    streams.set_defaults(handler=_stream)
