"""Scoring with the champion: ``predict`` (a file) and ``serve`` (HTTP)."""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from feedback_pipeline.cli._common import print_json
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.serving import server
from feedback_pipeline.serving.batch import score_file


def _predict(args: argparse.Namespace) -> int:
    """Score a file of prediction records with the champion (or --version)."""
    registry = local_registry(args.data_dir)
    version = args.version or registry.alias_version(CHAMPION)
    if version is None:
        raise ValueError("no champion yet: run `make demo` or retrain_job, or pass --version")
    if str(version) not in registry.versions():
        raise ValueError(f"--version {version}: no such version of {registry.model_name}")
    model = registry.load(str(version))
    # Everything loaded so far (MLflow, the libraries, the model) outlives the scoring: frozen,
    # it is left out of the full collections that the pyfunc's per-batch allocations trigger
    # (one 1M-row call took 1.94 s instead of 1.03 s when one ran). Thawed after, for callers
    # that run this in a longer process.
    gc.collect()
    gc.freeze()
    try:
        result = score_file(args.input, args.output, model, str(version))
    finally:
        gc.unfreeze()
    if args.json:
        print_json(result.as_dict())
        return 0
    print(
        f"{args.input} -> {args.output}: {result.rows:,} rows, {result.scored:,} scored by "
        f"{registry.model_name} version {result.model_version} ({result.fallbacks:,} fell back "
        f"to rule_confidence), {result.rejected:,} rejected"
    )
    for reason, count in sorted(result.reasons.items(), key=lambda item: -item[1]):
        print(f"  {count:>8,}  {reason}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run the HTTP server until it is stopped."""
    return server.run(server.config_from_args(args, args.data_dir)) or 0


def add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict", help="score a .jsonl, .csv or .parquet file of predictions with the champion"
    )
    predict.add_argument("--input", type=Path, required=True, help="prediction records")
    predict.add_argument(
        "--output", type=Path, required=True, help="one row per input record (.jsonl/.csv/.parquet)"
    )
    predict.add_argument("--version", default=None, help="a model version instead of the champion")
    predict.add_argument("--json", action="store_true", help="print the counts as JSON")
    predict.set_defaults(handler=_predict)


def add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the champion over HTTP: /predict (MLflow's scoring JSON), /health, /metrics",
    )
    server.add_server_arguments(serve)
    serve.set_defaults(handler=_serve)
