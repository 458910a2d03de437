"""A week of flipped feedback must not become the champion: the gate blocks it, while a
retrain with the gate off (``gate.mode: always``) promotes it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date, datetime, timedelta

import numpy as np
import pytest

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.progress import quiet
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.retrain import retrain as retrain_as_of
from feedback_pipeline.settings import Settings, with_overrides
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline.training.dataset import training_set_table
from feedback_pipeline.training.quarantine import quarantined_weeks, week_starts
from feedback_pipeline.warehouse import connection
from feedback_pipeline_tests.conftest import with_mlflow_store

START = date(2026, 1, 5)
FLIPPED_FROM_DAY = 49  # a week of feedback that says the opposite of the truth


def retrain(con, registry, settings: Settings, day: int):
    as_of = datetime.combine(START + timedelta(days=day), datetime.min.time())
    result = retrain_as_of(con, registry, settings, as_of, "test", quiet)
    return result.report, result.change


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
    return with_mlflow_store(folder)


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
        # the label audit catches it (the floor steps aside: the live champion fails the
        # flipped labels too, which is what a new concept would also look like)
        assert "labels contradict the champion in the week of" in change.reason
        assert registry.alias_version(CHAMPION) == champion
    else:  # the same data without the gate: the flipped week's refit is served
        assert change.promoted, change.reason
        assert registry.alias_version(CHAMPION) != champion


def test_a_flipped_week_is_quarantined_and_later_retrains_leave_it_out(flipped_stream, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(flipped_stream, data_dir)
    con = connection.connect(data_dir / "warehouse.duckdb")
    registry = local_registry(data_dir)
    settings = Settings()
    assert retrain(con, registry, settings, FLIPPED_FROM_DAY)[1].promoted  # a clean champion
    champion = registry.alias_version(CHAMPION)

    # A week on, the flipped week's first labels: the champion ranks them backwards.
    report, change = retrain(con, registry, settings, FLIPPED_FROM_DAY + 7)
    flipped_week = week_starts(
        np.array([np.datetime64(START + timedelta(days=FLIPPED_FROM_DAY), "D")])
    )[0]
    assert [np.datetime64(w.week_start, "us") for w in report.contradicting_weeks] == [flipped_week]
    assert report.contradicting_weeks[0].auc < 0.3
    assert not change.promoted and "labels contradict the champion" in change.reason
    assert registry.alias_version(CHAMPION) == champion
    found_at = datetime.combine(START + timedelta(days=FLIPPED_FROM_DAY + 7), datetime.min.time())
    assert quarantined_weeks(con, registry.model_name, found_at) == [flipped_week.astype(datetime)]
    assert quarantined_weeks(con, registry.model_name, found_at - timedelta(seconds=1)) == []

    # Two weeks on: the set leaves the week's feedback out, and its refit is promoted.
    report, change = retrain(con, registry, settings, FLIPPED_FROM_DAY + 14)
    left_in = con.execute(
        f"""SELECT count(*) FROM {training_set_table(report.training_set_hash)}
            WHERE source <> 'baseline' AND date_trunc('week', event_time) = ?""",
        [flipped_week.astype(datetime)],
    ).fetchall()[0][0]
    con.close()
    assert left_in == 0
    assert report.contradicting_weeks == ()
    assert change.promoted, change.reason
