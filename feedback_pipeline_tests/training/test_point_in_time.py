"""Point in time: a training set as of T is the same whether the warehouse holds only what was
known at T or everything that arrived later too."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.settings import Settings
from feedback_pipeline.simulator import SimulationConfig, simulate
from feedback_pipeline.training.dataset import (
    TrainingSetError,
    build_training_set,
    discover_features,
)
from feedback_pipeline.warehouse import connection as warehouse

T = datetime(2026, 1, 19)
TIME_FIELD = {"predictions": "predicted_at", "feedback": "occurred_at", "baseline": "as_of"}


def split_landing_zone(source: Path, before: Path, after: Path) -> None:
    """Every record of ``source`` into ``before`` (its time <= T) or ``after`` (later)."""
    for kind, field in TIME_FIELD.items():
        for path in sorted((source / kind).glob("*.jsonl")):
            early, late = [], []
            for line in path.read_text().splitlines():
                record = json.loads(line)
                at = datetime.fromisoformat(record[field]).replace(tzinfo=None)
                (early if at <= T else late).append(line)
            for folder, lines in ((before, early), (after, late)):
                if lines:
                    (folder / kind).mkdir(parents=True, exist_ok=True)
                    (folder / kind / path.name).write_text("\n".join(lines) + "\n")


def training_set_hash(con, as_of: datetime) -> str:
    settings = Settings()
    build_labeled_outcomes(con, settings.labeling, as_of)
    features = discover_features(con, settings.features)
    return build_training_set(con, settings.training, features, as_of).info.content_hash


def test_what_arrives_after_t_never_changes_the_training_set_as_of_t(tmp_path):
    source = tmp_path / "all"
    simulate(source, SimulationConfig(days=21, predictions_per_day=80, bad_rate=0.0, seed=3))
    split_landing_zone(source, tmp_path / "before", tmp_path / "after")
    con = warehouse.connect(tmp_path / "warehouse.duckdb")
    for kind in TIME_FIELD:
        ingest_kind(con, tmp_path / "before", kind)
    known_at_t = training_set_hash(con, T)
    for kind in TIME_FIELD:
        ingest_kind(con, tmp_path / "after", kind)
    assert con.execute("SELECT max(predicted_at) FROM raw.predictions").fetchall()[0][0] > T
    assert training_set_hash(con, T) == known_at_t
    # Later data does change a later training set: the hash is not blind.
    assert training_set_hash(con, datetime(2026, 1, 24)) != known_at_t

    # Labels built as of one time, a training set as of another: refused, naming both.
    build_labeled_outcomes(con, Settings().labeling, datetime(2026, 1, 24))
    with pytest.raises(TrainingSetError, match="labeled_outcomes was built as of 2026-01-24"):
        build_training_set(con, Settings().training, discover_features(con, None), T)
    con.close()
