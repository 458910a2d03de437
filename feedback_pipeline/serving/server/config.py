"""The server's configuration: ServerConfig, checked at startup, and the command-line options
that build it, shared by ``feedback-pipeline serve`` and ``python -m``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from feedback_pipeline.registry.model_registry import CHAMPION, MODEL_NAME, default_tracking_uri
from feedback_pipeline.serving.server.protocol import MIN_DEPTH
from feedback_pipeline.vocabulary import ENVIRONMENTS

MIB = 1 << 20
# The integer limits, as (option, ServerConfig field, help): the option's argparse name is the
# field's, so one table builds the options and reads them back.
LIMIT_OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "--max-body-bytes",
        "max_body_bytes",
        "a larger request body is refused (413) before it is read",
    ),
    ("--max-rows", "max_rows", "a request with more rows is refused (413)"),
    ("--max-depth", "max_depth", "JSON nested deeper is refused (400)"),
    (
        "--max-buffered-rows",
        "max_buffered_rows",
        "served rows held for the write-back; while writes fail, more are dropped",
    ),
    (
        "--log-retention-days",
        "log_retention_days",
        "request logs (DATA/serving/requests-*.jsonl) older than this are deleted",
    ),
    (
        "--log-retention-bytes",
        "log_retention_bytes",
        "and the oldest, while all of them hold more (today's is always kept)",
    ),
)


@dataclass(frozen=True)
class ServerConfig:
    """What ``feedback-pipeline serve`` runs; the tracking URI is ``$MLFLOW_TRACKING_URI``,
    else the data directory's sqlite registry (``default_tracking_uri``)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    model_name: str = MODEL_NAME
    alias: str = CHAMPION
    reload_interval_seconds: float = 10.0
    flush_rows: int = 1000
    flush_seconds: float = 5.0
    environment: str = "prod"
    max_body_bytes: int = 8 * MIB  # 10,000 rows of ten features take about 2 MB
    max_rows: int = 10_000
    max_depth: int = 32
    max_buffered_rows: int = 100_000  # served rows held for the write-back (disk full: capped)
    log_retention_days: int = 30
    log_retention_bytes: int = 1024 * MIB

    def __post_init__(self) -> None:
        """Refuse settings the server would trip on later, with the reason, at startup."""
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}, not {self.environment!r}")
        if self.flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, not {self.flush_rows}")
        if not (self.flush_seconds > 0 and self.reload_interval_seconds > 0):
            raise ValueError("flush_seconds and reload_interval_seconds must be positive")
        for name in ("max_body_bytes", "max_rows", "log_retention_days", "log_retention_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_depth < MIN_DEPTH:
            raise ValueError(
                f"max_depth must be at least {MIN_DEPTH} (MLflow's dataframe_split nests that "
                f"deep), not {self.max_depth}"
            )
        if self.max_buffered_rows < max(self.flush_rows, self.max_rows):
            raise ValueError(
                f"max_buffered_rows ({self.max_buffered_rows}) must be at least flush_rows "
                f"({self.flush_rows}) and max_rows ({self.max_rows}): a smaller cap would drop "
                "rows while the disk is fine"
            )

    @property
    def tracking_uri(self) -> str:
        return default_tracking_uri(self.data_dir)

    @property
    def predictions_dir(self) -> Path:
        return self.data_dir / "landing" / "predictions"

    @property
    def requests_dir(self) -> Path:
        return self.data_dir / "serving"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, shared by ``feedback-pipeline serve`` and ``python -m``."""
    defaults = ServerConfig(data_dir=Path("data"))
    parser.add_argument("--host", default=defaults.host, help="default: loopback only")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--alias", default=defaults.alias)
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=defaults.reload_interval_seconds,
        help="seconds between checks of the alias and the serving policy",
    )
    parser.add_argument(
        "--flush-rows", type=int, default=defaults.flush_rows, help="write back after N rows"
    )
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=defaults.flush_seconds,
        help="or after this long, whichever comes first",
    )
    parser.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        default=defaults.environment,
        help="written on served rows that do not say, in the landing file names and the "
        "request log",
    )
    for option, field, help_text in LIMIT_OPTIONS:
        parser.add_argument(option, type=int, default=getattr(defaults, field), help=help_text)


def config_from_args(args: argparse.Namespace, data_dir: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir.resolve(),
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        alias=args.alias,
        reload_interval_seconds=args.reload_interval,
        flush_rows=args.flush_rows,
        flush_seconds=args.flush_seconds,
        environment=args.environment,
        **{field: getattr(args, field) for _, field, _ in LIMIT_OPTIONS},
    )
