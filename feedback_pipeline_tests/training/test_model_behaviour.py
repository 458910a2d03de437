"""Model behaviour on simulated drifting data (fixed seed) with a real MLflow sqlite registry."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from feedback_pipeline.metrics import classification_metrics, predict_probability
from feedback_pipeline.progress import quiet
from feedback_pipeline.promotion.judge import EvaluationReport
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION
from feedback_pipeline.retrain import retrain as retrain_as_of_time
from feedback_pipeline.retrain import retrain_on
from feedback_pipeline.settings import Settings, TrainingSettings
from feedback_pipeline.training.dataset import (
    build_training_set,
    discover_features,
    load_info,
    training_set_table,
)
from feedback_pipeline.training.families import fit, train_family
from feedback_pipeline.training.splits import load_split, selection_sample
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.tables import TRAINING_SET
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF

SETTINGS = Settings()


@pytest.fixture
def sim_con(simulated_dir):
    connection = warehouse.connect(simulated_dir / "warehouse.duckdb")
    yield connection
    connection.close()


def holdout_auc(con, training: TrainingSettings, family: str = "xgboost") -> float:
    features = discover_features(con, None)
    build_training_set(con, training, features, SIMULATED_AS_OF)
    train, validation, holdout = (
        load_split(con, s, features) for s in ("train", "validation", "holdout")
    )
    fitted = train_family(
        family, SETTINGS.models.hyperparameters.for_family(family), train, validation, seed=42
    )
    return classification_metrics(holdout.y, predict_probability(fitted.estimator, holdout.X))[
        "roc_auc"
    ]


def test_feedback_beats_the_baseline_only_model_on_the_holdout(sim_con):
    with_feedback = holdout_auc(sim_con, TrainingSettings())
    baseline_only = holdout_auc(sim_con, TrainingSettings(use_outcomes=False))
    assert with_feedback > baseline_only + 0.02, (with_feedback, baseline_only)


def retrain(
    con, registry, trigger: str = "test", settings: Settings = SETTINGS
) -> EvaluationReport:
    """The retrain's steps 3-5 on the newest training set (which the test built or edited)."""
    return retrain_on(con, registry, settings, load_info(con), trigger, progress=quiet).report


def retrain_as_of(
    con, registry, features: list[str], as_of: datetime, settings: Settings = SETTINGS
) -> EvaluationReport:
    """The whole retrain as of ``as_of``: labels, training set, then steps 3-5."""
    assert features == discover_features(con, settings.features)
    return retrain_as_of_time(con, registry, settings, as_of, "test", quiet).report


def test_cold_start_promotes_then_shuffled_labels_are_refused(sim_con, simulated_dir):
    registry = local_registry(simulated_dir)
    features = discover_features(sim_con, None)
    build_training_set(sim_con, SETTINGS.training, features, SIMULATED_AS_OF)
    first = retrain(sim_con, registry)
    assert first.decision.applied, first.decision.reason
    champion = registry.alias_version(CHAMPION)
    candidate = first.best.challenger.version
    # What is promoted is a refit of the evaluated candidate, linked to it.
    assert champion != candidate
    assert registry.version_tags(champion)["refit_of"] == candidate
    assert registry.version_tags(champion)["role"] == "refit"
    assert registry.alias_version(CHALLENGER) == candidate

    # Same rows, labels shuffled among train and validation rows: a model of noise.
    sim_con.execute("SELECT setseed(0.42)")
    sim_con.execute(
        f"""CREATE OR REPLACE TEMP TABLE shuffled AS
            WITH fit AS (SELECT row_id, label FROM {TRAINING_SET} WHERE split <> 'holdout'),
                 a AS (SELECT row_id, row_number() OVER (ORDER BY row_id) AS i FROM fit),
                 r AS (SELECT label, random() AS draw FROM fit),
                 b AS (SELECT label, row_number() OVER (ORDER BY draw) AS i FROM r)
            SELECT a.row_id, b.label FROM a JOIN b USING (i)"""
    )
    # Stored as a set of its own (another hash), as a build of these labels would be.
    table = training_set_table(load_info(sim_con).content_hash)
    sim_con.execute(
        f"UPDATE {table} t SET label = s.label FROM shuffled s WHERE t.row_id = s.row_id"
    )
    shuffled = "5b0ff1ed5b0ff1ed"
    sim_con.execute(f"ALTER TABLE {table} RENAME TO training_set_{shuffled}")
    sim_con.execute(
        f"CREATE OR REPLACE VIEW {TRAINING_SET} AS SELECT * FROM {table[:-16]}{shuffled}"
    )
    sim_con.execute(f"UPDATE training.training_set_info SET content_hash = '{shuffled}'")
    second = retrain(sim_con, registry)
    assert not second.decision.applied, second.decision.reason
    assert second.best.challenger.version != champion
    assert registry.alias_version(CHAMPION) == champion
    events = sim_con.execute(
        "SELECT promoted, new_version FROM ops.retraining_events ORDER BY recorded_at"
    ).fetchall()
    assert events == [(True, champion), (False, champion)]


def test_retrain_on_unchanged_data_promotes_nothing_and_adds_no_version(sim_con, simulated_dir):
    registry = local_registry(simulated_dir)
    features = discover_features(sim_con, None)
    build_training_set(sim_con, SETTINGS.training, features, SIMULATED_AS_OF)
    retrain(sim_con, registry)
    versions = registry.versions()
    aliases = (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER))

    build_training_set(sim_con, SETTINGS.training, features, SIMULATED_AS_OF)
    report = retrain(sim_con, registry)

    # the gate finds the same procedure not worse; its refit is the champion already
    assert "challenger's procedure is not worse" in report.decision.reason
    promoted, reason = sim_con.execute(
        "SELECT promoted, reason FROM ops.retraining_events ORDER BY recorded_at DESC LIMIT 1"
    ).fetchall()[0]
    assert promoted is False and reason.startswith("the refit is the current champion")
    assert registry.versions() == versions
    assert (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)) == aliases
    assert sim_con.execute("SELECT count(*) FROM ops.retraining_events").fetchall()[0][0] == 2


def test_same_data_settings_and_seed_give_the_same_metrics(sim_con):
    first = holdout_auc(sim_con, TrainingSettings())
    second = holdout_auc(sim_con, TrainingSettings())
    assert first == second


def test_the_refit_learns_from_rows_after_the_holdout_start_and_the_candidate_does_not(
    sim_con, simulated_dir
):
    registry = local_registry(simulated_dir)
    build_training_set(
        sim_con, SETTINGS.training, discover_features(sim_con, None), SIMULATED_AS_OF
    )
    report = retrain(sim_con, registry)
    holdout_start, newest_final = sim_con.execute(
        f"""SELECT min(event_time) FILTER (WHERE split = 'holdout'),
                   max(labeled_at) FILTER (WHERE source <> 'baseline')
            FROM {TRAINING_SET} WHERE split <> 'pending'"""
    ).fetchall()[0]
    newest_fit_row = sim_con.execute(
        f"SELECT max(event_time) FROM {TRAINING_SET} WHERE split IN ('train', 'validation')"
    ).fetchall()[0][0]
    assert newest_fit_row < holdout_start  # the evaluated candidate never saw the holdout
    candidate = registry.version_tags(report.best.challenger.version)
    refit = registry.version_tags(registry.alias_version(CHAMPION))
    assert datetime.fromisoformat(candidate["data_watermark"]) < newest_final
    assert datetime.fromisoformat(refit["data_watermark"]) == newest_final > holdout_start
    run = registry.client.get_run(registry.run_id(registry.alias_version(CHAMPION)))
    refit_rows = sim_con.execute(
        f"SELECT count(*) FROM {TRAINING_SET} "
        "WHERE split IN ('train', 'validation', 'holdout', 'refit_only')"
    ).fetchall()[0][0]
    assert run.data.metrics["rows_refit"] == refit_rows
    assert run.data.params["refit_of"] == report.best.challenger.version
    # Recent rows whose only label so far is a fast human signal are left to mature.
    pending = sim_con.execute(
        f"""SELECT count(*) FROM labeled.labeled_outcomes l
            WHERE l.label_source <> 'outcome'
              AND l.predicted_at > (
                  SELECT data_clock - to_microseconds((maturity_days * 86400e6)::BIGINT)
                  FROM training.training_set_info)
              AND l.prediction_id IN (SELECT row_id FROM {TRAINING_SET})"""
    ).fetchall()[0][0]
    assert pending == 0


def test_the_champion_is_judged_only_on_rows_newer_than_its_watermark(sim_con, simulated_dir):
    registry = local_registry(simulated_dir)
    features = discover_features(sim_con, None)
    earlier = SIMULATED_AS_OF - timedelta(days=7)
    retrain_as_of(sim_con, registry, features, earlier)
    champion = registry.alias_version(CHAMPION)
    watermark = datetime.fromisoformat(registry.version_tags(champion)["data_watermark"])

    report = retrain_as_of(sim_con, registry, features, SIMULATED_AS_OF)
    newer, holdout = sim_con.execute(
        f"SELECT count(*) FILTER (WHERE labeled_at > ?), count(*) FROM {TRAINING_SET} "
        "WHERE split = 'holdout'",
        [watermark],
    ).fetchall()[0]
    assert 0 < newer < holdout == report.holdout_rows
    assert report.fair_rows == newer
    assert f"({newer} rows)" in report.tables()["holdout_metrics"]  # the champion's row says so


def test_a_worse_challenger_refreshes_the_champions_procedure_on_the_fresh_data(
    sim_con, simulated_dir
):
    """The gate prefers the champion's procedure: its refit on this week's rows is promoted, a
    new version that says it is a refresh, and the alias moves (the model keeps learning)."""
    registry = local_registry(simulated_dir)
    features = discover_features(sim_con, None)
    earlier = SIMULATED_AS_OF - timedelta(days=7)
    retrain_as_of(sim_con, registry, features, earlier)
    first = registry.alias_version(CHAMPION)
    procedure = registry.version_tags(first)["procedure"]

    stump = Settings.model_validate(
        {"models": {"hyperparameters": {"xgboost": {"n_estimators": 1, "max_depth": 1}}}}
    )  # one split: a worse procedure on any holdout
    report = retrain_as_of(sim_con, registry, features, SIMULATED_AS_OF, stump)

    assert report.decision.refresh and not report.decision.promote, report.decision.reason
    assert report.champion_procedure_metrics["log_loss"] < report.best.holdout["log_loss"]
    refreshed = registry.alias_version(CHAMPION)
    assert refreshed not in (first, report.best.challenger.version)
    tags = registry.version_tags(refreshed)
    assert (tags["role"], tags["refit_kind"], tags["refit_of"]) == ("refit", "refresh", first)
    assert tags["procedure"] == procedure
    assert tags["as_of"] == str(SIMULATED_AS_OF)
    assert datetime.fromisoformat(tags["data_watermark"]) > datetime.fromisoformat(
        registry.version_tags(first)["data_watermark"]
    )
    ((promoted, new_version),) = sim_con.execute(
        "SELECT promoted, new_version FROM ops.retraining_events ORDER BY recorded_at DESC LIMIT 1"
    ).fetchall()
    assert (promoted, new_version) == (True, refreshed)


def test_procedures_are_compared_on_the_same_sample_of_train_rows(sim_con, simulated_dir):
    """With training.selection_rows below the train split, the challenger and the champion's
    procedure are both fit on the same seeded sample; the card says so; the refit uses all."""
    registry = local_registry(simulated_dir)
    capped = Settings.model_validate({"training": {"selection_rows": 1000}})
    features = discover_features(sim_con, None)
    build_training_set(sim_con, capped.training, features, SIMULATED_AS_OF)
    retrain(sim_con, registry, settings=capped)
    first = registry.alias_version(CHAMPION)
    procedure = json.loads(registry.version_tags(first)["procedure"])

    other = Settings.model_validate(
        {
            "training": {"selection_rows": 1000},
            "models": {"hyperparameters": {"xgboost": {"max_depth": 2}}},
        }
    )
    report = retrain(sim_con, registry, settings=other)
    sample = selection_sample(load_split(sim_con, "train", features), 1000, 42)
    holdout = load_split(sim_con, "holdout", features)
    by_hand = fit(procedure["family"], procedure["params"], sample, 42)
    expected = classification_metrics(holdout.y, predict_probability(by_hand, holdout.X))
    assert report.champion_procedure_metrics == pytest.approx(expected)
    run = registry.client.get_run(report.best.challenger.run_id)
    assert run.data.metrics["rows_train"] == 1000
    card = registry.client.download_artifacts(run.info.run_id, "model_card.md")
    assert "sample of 1,000 of the" in Path(card).read_text()
    refit = registry.version_tags(registry.alias_version(CHAMPION))
    assert refit["role"] == "refit"
    assert (
        registry.client.get_run(registry.run_id(registry.alias_version(CHAMPION))).data.metrics[
            "rows_refit"
        ]
        > 1000
    )
