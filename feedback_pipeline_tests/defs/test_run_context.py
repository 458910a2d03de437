"""One run context: one as_of per run, inputs built for another as_of or another training set
refused, a dry run moving nothing, and an MLflow outage failing loudly instead of promoting."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.resources import MlflowRegistryResource, local_resources
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import Registry, local_registry
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF, run_job

AS_OF = SIMULATED_AS_OF.isoformat() + "Z"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


def execute(data_dir: Path, instance, job: str = "retrain_job", assets=None, **context):
    """``run_job`` that never raises: these tests read the failures."""
    return run_job(data_dir, instance, job, assets, raise_on_error=False, **context)


def failure_messages(result) -> str:
    return "\n".join(
        e.step_failure_data.error.message for e in result.all_events if e.is_step_failure
    )


def aliases(data_dir: Path) -> tuple[str | None, str | None]:
    # Explicitly the local store: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI.
    registry = Registry(f"sqlite:///{data_dir / 'mlflow.db'}", str(data_dir / "mlartifacts"))
    return registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)


def ledger(data_dir: Path) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            "SELECT action, mode, promoted, reason FROM ops.retraining_events ORDER BY recorded_at"
        ).fetchall()
    finally:
        con.close()


def test_every_asset_of_a_run_records_the_same_as_of(simulated_dir, instance):
    result = execute(simulated_dir, instance, as_of=AS_OF)
    assert result.success, failure_messages(result)
    recorded = {
        m.asset_key.to_user_string(): m.metadata["as_of"].value
        for m in result.asset_materializations_for_node("labeled_outcomes")
        + result.asset_materializations_for_node("training_set")
        + result.asset_materializations_for_node("challenger_models")
        + result.asset_materializations_for_node("evaluation_report")
        + result.asset_materializations_for_node("champion_model")
    }
    assert len(recorded) == 5
    assert set(recorded.values()) == {SIMULATED_AS_OF.isoformat()}


def test_training_set_refuses_labels_built_for_another_as_of(simulated_dir, instance):
    labels = execute(simulated_dir, instance, "ingest_job", as_of="2026-02-10T00:00:00Z")
    assert labels.success
    refused = execute(simulated_dir, instance, assets=["training_set"], as_of=AS_OF)
    assert not refused.success
    message = failure_messages(refused)
    assert "labeled_outcomes was built as of 2026-02-10 00:00:00" in message
    assert f"this training set is as of {SIMULATED_AS_OF}" in message
    assert "rematerialize labeled_outcomes with the same as_of" in message


def test_an_empty_window_fails_at_training_set_naming_as_of_and_the_data_range(
    simulated_dir, instance
):
    result = execute(simulated_dir, instance, as_of="2020-06-01T00:00:00Z")
    assert not result.success
    failed = [e.step_key for e in result.all_events if e.is_step_failure]
    assert failed == ["training_set"]
    message = failure_messages(result)
    assert "training set empty for as_of 2020-06-01 00:00:00" in message
    assert "the data spans 2026-01-05" in message
    assert local_registry(simulated_dir).versions() == []


def metadata(result, asset: str, key: str):
    (materialization,) = result.asset_materializations_for_node(asset)
    return materialization.metadata[key].value


def test_evaluation_reads_the_set_its_challengers_were_trained_on_until_it_is_pruned(
    simulated_dir, instance
):
    first = execute(simulated_dir, instance, as_of=AS_OF)
    assert first.success
    trained_on = metadata(first, "challenger_models", "training_set_hash")
    before = aliases(simulated_dir)
    rebuilt = execute(
        simulated_dir,
        instance,
        assets=["labeled_outcomes", "training_set"],
        as_of="2026-02-12T00:00:00Z",
    )
    assert rebuilt.success, failure_messages(rebuilt)
    assert metadata(rebuilt, "training_set", "content_hash") != trained_on
    again = execute(simulated_dir, instance, assets=["evaluation_report"], as_of=AS_OF)
    assert again.success, failure_messages(again)  # the challengers' own set, not the newest
    assert metadata(again, "evaluation_report", "training_set_hash") == trained_on

    for day in (11, 10, 9):  # KEEP_TRAINING_SETS newer sets than the challengers' one
        newer = execute(
            simulated_dir,
            instance,
            assets=["labeled_outcomes", "training_set"],
            as_of=f"2026-02-{day:02d}T00:00:00Z",
        )
        assert newer.success, failure_messages(newer)
    pruned = execute(simulated_dir, instance, assets=["evaluation_report"], as_of=AS_OF)
    assert not pruned.success
    message = failure_messages(pruned)
    assert f"challengers were trained on training set {trained_on}" in message
    assert "is not in the warehouse" in message and "Rematerialize training_set" in message
    assert aliases(simulated_dir) == before


def test_dry_run_through_retrain_job_moves_no_alias_and_the_ledger_says_so(simulated_dir, instance):
    result = execute(
        simulated_dir, instance, as_of=AS_OF, settings_overrides={"gate": {"mode": "dry_run"}}
    )
    assert result.success, failure_messages(result)
    assert aliases(simulated_dir) == (None, None)
    ((action, mode, promoted, reason),) = ledger(simulated_dir)
    assert (action, mode, promoted) == ("retrain", "dry_run", False)
    assert reason.startswith("[dry run, nothing moved] would promote")


@pytest.fixture
def mlflow_fails_fast(monkeypatch):
    """MLflow's HTTP client retries with backoff by default; one refused connection is enough."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_mlflow_unreachable_fails_evaluation_and_moves_no_alias(
    simulated_dir, instance, mlflow_fails_fast
):
    assert execute(simulated_dir, instance, as_of=AS_OF).success
    before = aliases(simulated_dir)
    assert before[0] is not None
    resources = {
        **local_resources(simulated_dir),
        "mlflow_registry": MlflowRegistryResource(
            tracking_uri=UNREACHABLE, artifact_root=str(simulated_dir / "mlartifacts")
        ),
    }
    job = dg.Definitions(
        assets=build_defs(simulated_dir).assets, resources=resources
    ).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        run_config=run_context_config(AS_OF),
        asset_selection=[dg.AssetKey("evaluation_report"), dg.AssetKey("champion_model")],
        raise_on_error=False,
    )
    assert not result.success
    assert [e.step_key for e in result.all_events if e.is_step_failure] == ["evaluation_report"]
    message = failure_messages(result)
    assert f"MLflow at {UNREACHABLE} did not answer" in message
    assert "nothing was promoted" in message
    assert aliases(simulated_dir) == before
    assert [row[0] for row in ledger(simulated_dir)] == ["retrain"]  # no second decision


def test_mlflow_unreachable_fails_the_sensor_tick_loudly(
    simulated_dir, instance, mlflow_fails_fast
):
    sensor = build_defs(simulated_dir).resolve_sensor_def("new_labels_sensor")
    resources = {
        **local_resources(simulated_dir),
        "mlflow_registry": MlflowRegistryResource(tracking_uri=UNREACHABLE, artifact_root="x"),
    }
    with pytest.raises(Exception, match=f"MLflow at {UNREACHABLE} did not answer"):
        sensor(dg.build_sensor_context(instance=instance, resources=resources))
