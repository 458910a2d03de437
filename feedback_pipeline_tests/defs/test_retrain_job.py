"""End to end: retrain_job and full_retrain_job with a real Dagster instance, DuckDB file and
MLflow sqlite registry; then the CLI moves the champion and the ledger records it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pandas as pd

from feedback_pipeline.cli import main
from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION, default_tracking_uri
from feedback_pipeline.served_policy import OUTPUT_COLUMNS
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF

AS_OF = SIMULATED_AS_OF.isoformat() + "Z"


def run(data_dir: Path, instance: dg.DagsterInstance, job: str, **tags):
    config = run_context_config(AS_OF, full_retrain=job == "full_retrain_job")
    result = (
        build_defs(data_dir)
        .resolve_job_def(job)
        .execute_in_process(instance=instance, run_config=config, tags=tags or None)
    )
    assert result.success
    return result


def ledger(data_dir: Path) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT action, trigger, old_version, new_version, promoted, reason, dagster_run_id "
            "FROM ops.retraining_events ORDER BY recorded_at"
        ).fetchall()
    finally:
        con.close()


def test_retrain_job_leaves_a_loadable_champion_and_a_ledger_row(championed):
    data_dir, run_id, home = championed
    # as a consumer's process does (this one has had other registries: both URIs are set)
    mlflow.set_tracking_uri(default_tracking_uri(data_dir))
    mlflow.set_registry_uri(default_tracking_uri(data_dir))
    champion = mlflow.pyfunc.load_model("models:/feedback_model@champion")
    columns = champion.metadata.get_input_schema().input_names()
    # the features, sorted, then the caller's rule score (the serving policy's fallback)
    assert columns[:-1] == sorted(columns[:-1]) and "momentum" in columns
    assert columns[-1] == "rule_confidence"
    scores = champion.predict(pd.DataFrame([{name: 0.1 for name in columns}] * 3))
    assert list(scores.columns) == list(OUTPUT_COLUMNS)
    assert scores["probability"].between(0, 1).all() and not scores["fallback"].any()

    (event,) = ledger(data_dir)
    assert event[:2] == ("retrain", "weekly")
    assert event[4] is True and event[6] == run_id

    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    assert (event[2], event[3]) == (None, champion)  # the ledger names the version served
    version = registry.alias_version(CHALLENGER)  # the evaluated candidate
    assert registry.version_tags(champion)["refit_of"] == version  # the champion is its refit
    tags = registry.version_tags(version)
    assert tags["trigger"] == "weekly" and tags["dagster_run_id"] == run_id
    assert tags["training_set_hash"] and tags["data_watermark"] != "None"
    assert registry.version_tags(champion)["dagster_run_id"] == run_id

    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("evaluation_report"))
    assert event.run_id == run_id
    report = event.asset_materialization.metadata
    assert "| model" in report["holdout_metrics"].value
    assert "**PROMOTE**" in report["decision"].value
    artifacts = {
        a.path for a in registry.client.list_artifacts(registry.run_id(version), "evaluation")
    }
    assert {
        "evaluation/report.json",
        "evaluation/report.md",
        "evaluation/roc.png",
        "evaluation/calibration.png",
    } <= artifacts


def test_second_retrain_on_same_data_is_ledgered_and_moves_no_alias(championed_dir, instance):
    data_dir = championed_dir
    registry = local_registry(data_dir)
    before = (
        registry.alias_version(CHAMPION),
        registry.alias_version(CHALLENGER),
        registry.versions(),
    )
    run(data_dir, instance, "retrain_job")
    assert (
        registry.alias_version(CHAMPION),
        registry.alias_version(CHALLENGER),
        registry.versions(),
    ) == before
    events = ledger(data_dir)
    assert [e[4] for e in events] == [True, False], events


def test_full_retrain_then_forced_promotion_then_rollback(championed_dir, instance, capsys):
    data_dir = championed_dir
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    result = run(data_dir, instance, "full_retrain_job", trigger="monthly")
    families = {registry.version_tags(v)["family"] for v in registry.versions()}
    assert families == {"xgboost", "logistic_regression", "random_forest"}
    assert result.asset_materializations_for_node("champion_model")

    other = next(v for v in registry.versions() if v != registry.alias_version(CHAMPION))
    current = registry.alias_version(CHAMPION)
    assert main(["--data-dir", str(data_dir), "promote", other, "--reason", "canary test"]) == 0
    assert registry.alias_version(CHAMPION) == other
    assert main(["--data-dir", str(data_dir), "rollback", "--reason", "canary failed"]) == 0
    assert registry.alias_version(CHAMPION) == current
    actions = [(e[0], e[2], e[3], e[5]) for e in ledger(data_dir)[-2:]]
    assert actions == [
        ("forced_promotion", current, other, "canary test"),
        ("rollback", other, current, "canary failed"),
    ]
    assert champion is not None
    assert main(["--data-dir", str(data_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert f"champion: feedback_model version {current}" in out
    assert "## Last decisions" in out


def test_promote_needs_an_existing_version_and_a_reason(championed_dir, capsys):
    data_dir = championed_dir
    assert main(["--data-dir", str(data_dir), "promote", "999", "--reason", "x"]) == 2
    assert "no version 999" in capsys.readouterr().err
    assert main(["--data-dir", str(data_dir), "promote", "1", "--reason", " "]) == 2
