"""A week of flipped feedback must not become the champion: the gate blocks it, while a
retrain with the gate off (``gate.mode: always``) promotes it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from feedback_pipeline.evaluation.report import evaluate
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.promotion.apply import apply_decision
from feedback_pipeline.registry.mlflow_registry import CHAMPION, local_registry
from feedback_pipeline.settings import Settings, with_overrides
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.warehouse import connection

START = date(2026, 1, 5)
FLIPPED_FROM_DAY = 49  # a week of feedback that says the opposite of the truth


def retrain(con, registry, settings: Settings, day: int):
    as_of = datetime.combine(START + timedelta(days=day), datetime.min.time())
    build_labeled_outcomes(con, settings.labeling, as_of)
    build_training_set(con, settings.training, discover_features(con, None), as_of)
    quiet = lambda message: None  # noqa: E731
    round_ = train_challengers(con, registry, settings, ["xgboost"], False, {}, quiet)
    report = evaluate(con, registry, round_, settings.gate, settings.models.seed, quiet)
    return report, apply_decision(con, registry, report, "test", None, settings, quiet)


@pytest.fixture(scope="module")
def flipped_stream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flipped")
    config = SimulationConfig(
        start=START, days=71, predictions_per_day=120, baseline_per_day=60, seed=3, bad_rate=0.0
    )
    simulate(folder / "landing", replace(config, label_noise_day=FLIPPED_FROM_DAY))
    con = connection.connect(folder / "warehouse.duckdb")
    for kind in ("predictions", "feedback", "baseline"):
        ingest_kind(con, folder / "landing", kind)
    con.close()
    return folder


@pytest.mark.parametrize("mode", ["enforce", "always"])
def test_flipped_labels_are_not_promoted_by_the_gate(flipped_stream, tmp_path, mode):
    data_dir = tmp_path / "data"
    shutil.copytree(flipped_stream, data_dir)
    con = connection.connect(data_dir / "warehouse.duckdb")
    registry = local_registry(data_dir)
    settings = Settings()
    _, first = retrain(con, registry, settings, FLIPPED_FROM_DAY)  # a clean champion
    assert first.promoted, first.reason
    champion = registry.alias_version(CHAMPION)

    # Three weeks on, the flipped week's labels have matured into the holdout.
    gate = with_overrides(settings, {"gate": {"mode": mode}})
    report, change = retrain(con, registry, gate, FLIPPED_FROM_DAY + 21)
    con.close()
    assert report.best.holdout["roc_auc"] < 0.5  # the flipped week, seen by a sound model
    if mode == "enforce":
        assert not change.promoted, change.reason
        assert "below the floor" in change.reason
        assert registry.alias_version(CHAMPION) == champion
    else:  # the same data without the gate: the flipped week's refit is served
        assert change.promoted, change.reason
        assert registry.alias_version(CHAMPION) != champion
