"""The champion and what the warehouse holds, as ``make status`` and ``make demo`` print it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from feedback_pipeline.labels.outcomes import orphan_feedback_count
from feedback_pipeline.monitoring.triggers import count_new_labels, data_watermark
from feedback_pipeline.promotion import ledger
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse import summaries as reporting
from feedback_pipeline.warehouse.connection import table_exists

# A person is waiting: wait this long for another process's DuckDB lock, then say what to do.
LOCK_TIMEOUT_SECONDS = 5.0


def champion_summary(
    data_dir: Path, con: duckdb.DuckDBPyConnection
) -> tuple[str, pd.DataFrame | None]:
    """The champion's version, family, watermark and holdout metrics; labels since watermark."""
    if not (data_dir / "mlflow.db").exists() and "MLFLOW_TRACKING_URI" not in os.environ:
        return "no model registry yet: run `make demo` or retrain_job", None
    registry = local_registry(data_dir)
    version = registry.alias_version(CHAMPION)
    if version is None:
        return "no champion yet", None
    tags = registry.version_tags(version)
    metrics = {
        k.removeprefix("holdout_"): round(v, 4)
        for k, v in registry.run_metrics(version).items()
        if k.startswith("holdout_")
    }
    watermark = data_watermark(registry)  # the same watermark and count as the sensor
    since = count_new_labels(con, watermark, datetime.now(UTC).replace(tzinfo=None))
    line = (
        f"champion: feedback_model version {version} ({tags.get('family', '?')}), trained "
        f"as of {tags.get('as_of')}; data watermark {watermark}; matured labels since the "
        f"watermark: {since}"
    )
    return line, pd.DataFrame([metrics]) if metrics else None


def print_status(data_dir: Path, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> int:
    """Champion, last decisions, table counts, rejects, labels and feedback counts.

    Returns 1 when there is no warehouse yet, else 0 (the ``status`` command's exit code)."""
    path = data_dir / "warehouse.duckdb"
    if not path.exists():
        print(f"no warehouse at {path} yet: run `make demo` or the ingest_job first")
        return 1
    con = warehouse.connect(path, read_only=True, lock_timeout=lock_timeout)
    try:
        champion_line, champion_metrics = champion_summary(data_dir, con)
        sections = [
            ("Champion holdout metrics", champion_metrics),
            (
                "Last decisions",
                ledger.recent_events(con, 5) if table_exists(con, ledger.LEDGER) else None,
            ),
            ("Tables", reporting.table_counts(con)),
            ("Rejected records by reason", reporting.rejects_by_reason(con)),
            ("Labels by source and environment", reporting.labels_by_source_and_environment(con)),
            ("Feedback events", reporting.feedback_counts(con)),
        ]
        orphans = orphan_feedback_count(con)
    finally:
        con.close()
    print(f"warehouse: {path}\n{champion_line}\n")
    for title, frame in sections:
        if frame is not None:
            print(f"## {title}\n\n{reporting.markdown(frame, max_rows=40)}\n")
    print(f"orphan feedback events (prediction not landed yet): {orphans}")
    return 0
