"""What the sensors look at, without Dagster: new labels since the data watermark, landing files.

The watermark is the latest ``labeled_at`` a retrain has already used: the larger of the
``data_watermark`` tags of the ``champion`` and ``challenger`` versions (the challenger is the
best of the latest round), so a retrain that did not promote still consumes its labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION
from feedback_pipeline.warehouse.connection import table_exists
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry


@dataclass(frozen=True)
class NewLabels:
    watermark: datetime | None
    count: int
    threshold: int

    @property
    def enough(self) -> bool:
        return self.count >= self.threshold

    @property
    def run_key(self) -> str:
        return f"new_labels:{self.watermark.isoformat() if self.watermark else 'none'}"


def data_watermark(registry: Registry) -> datetime | None:
    """The latest ``labeled_at`` a retrain already used; None before the first retrain. The
    sensor and ``feedback-pipeline status`` both count new labels from here."""
    marks = []
    for alias in (CHAMPION, CHALLENGER):
        version = registry.alias_version(alias)
        if version is None:
            continue
        value = registry.version_tags(version).get("data_watermark")
        if value and value != "None":
            marks.append(datetime.fromisoformat(value))
    return max(marks, default=None)


def count_new_labels(
    con: duckdb.DuckDBPyConnection, watermark: datetime | None, now: datetime
) -> int:
    """Matured labels (``labeled_at <= now``) after the watermark: one range scan."""
    if not table_exists(con, LABELED_OUTCOMES):
        return 0
    return con.execute(
        f"SELECT count(*) FROM {LABELED_OUTCOMES} WHERE labeled_at > ? AND labeled_at <= ?",
        [watermark or datetime(1970, 1, 1), now],
    ).fetchall()[0][0]


def new_labels(
    con: duckdb.DuckDBPyConnection, registry: Registry, threshold: int, now: datetime
) -> NewLabels:
    watermark = data_watermark(registry)
    return NewLabels(watermark, count_new_labels(con, watermark, now), threshold)


def landing_signature(landing_dir: Path) -> tuple[str, int]:
    """A digest of every landing file's path, size and mtime, and the file count."""
    digest = hashlib.sha256()
    count = 0
    for kind in KINDS:
        folder = landing_dir / kind
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(landing_dir)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
            )
            count += 1
    return digest.hexdigest(), count
