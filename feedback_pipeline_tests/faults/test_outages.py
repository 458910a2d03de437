"""Outside systems failing: an unreachable MLflow fails every command in seconds and a retrain
before it trains, and a bad settings file fails a run before any step writes. The runs run in
this process, on the workspace's Dagster home."""

from __future__ import annotations

import time

import dagster as dg
import duckdb
import pytest
from dagster._core.execution.stats import StepEventStatus

from feedback_pipeline.cli import main
from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline_tests.conftest import run_job
from feedback_pipeline_tests.faults.runs import (
    AS_OF,
    UNREACHABLE_MLFLOW,
    failure_messages,
    materializations,
)

pytestmark = pytest.mark.end_to_end

# -- 6: MLflow unreachable ----------------------------------------------------------------------


def test_an_unreachable_mlflow_fails_commands_in_seconds_and_a_retrain_before_training(
    workspace, monkeypatch, capsys
):
    data_dir, home = workspace
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE_MLFLOW)
    records = data_dir / "to_score.jsonl"
    records.write_text('{"prediction_id": "p-1", "features": {"momentum": 0.1}}\n')
    scored = ["--input", str(records), "--output", str(data_dir / "scored.jsonl")]
    for command in (
        ["status"],
        ["promote", "1", "--reason", "outage"],
        ["predict", *scored],
        ["predict", *scored, "--version", "1"],
    ):
        began = time.monotonic()
        code = main(["--data-dir", str(data_dir), *command])
        # Waiting on MLflow takes seconds (2.4 s measured), not MLflow's default ~4 minutes.
        assert time.monotonic() - began < 30, command
        error = capsys.readouterr().err
        assert code == 3, error
        assert f"MLflow at {UNREACHABLE_MLFLOW} did not answer" in error
        assert "MLFLOW_TRACKING_URI" in error  # what to check
    assert not (data_dir / "scored.jsonl").exists()
    # A retrain whose definitions were loaded with MLflow down (the variable a run worker
    # would read at its start).
    defs = build_defs(data_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # this process reads the local registry again
    versions = local_registry(data_dir).versions()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = defs.resolve_job_def("retrain_job").execute_in_process(
            instance=instance,
            run_config=run_context_config(AS_OF.isoformat()),
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        steps = {s.step_key: s for s in instance.get_run_step_stats(run.run_id)}
        failed = steps["challenger_models"]
        assert failed.status == StepEventStatus.FAILURE  # before any training started
        assert failed.end_time - failed.start_time < 15
        assert "did not answer" in failure_messages(instance, run.run_id)
        assert "evaluation_report" not in steps or steps["evaluation_report"].start_time is None
    assert local_registry(data_dir).versions() == versions


# -- 9: a bad settings file ---------------------------------------------------------------------


def test_a_bad_settings_file_fails_the_run_before_any_step_writes(workspace, tmp_path, monkeypatch):
    data_dir, home = workspace
    new_file = data_dir / "landing" / "predictions" / "late-arrival.jsonl"
    new_file.write_text(
        '{"prediction_id": "late-1", "predicted_at": "2026-02-16T10:00:00Z", '
        '"confidence": 0.7, "features": {"momentum": 0.1}}\n'
    )
    settings = tmp_path / "settings.yaml"
    settings.write_text("gate:\n  mode: nope\n")
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    before = con.execute("SELECT count(*) FROM raw.ingested_files").fetchall()
    con.close()
    monkeypatch.setenv("FEEDBACK_PIPELINE_SETTINGS", str(settings))
    with (
        dg.DagsterInstance.from_config(str(home)) as instance,
        pytest.warns(UserWarning, match="gate.mode"),  # the code location says so too
    ):
        failed = run_job(data_dir, instance, as_of=AS_OF.isoformat(), raise_on_error=False)
    assert not failed.success
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM raw.ingested_files").fetchall() == before
        assert not con.execute(
            "SELECT * FROM raw.predictions WHERE prediction_id = 'late-1'"
        ).fetchall()
    finally:
        con.close()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="retrain_job"))
        materialized = materializations(instance, run.run_id)
        assert materialized == {}  # not one asset of the run was written
        logs = "\n".join(
            str(record.dagster_event.event_specific_data)
            for record in instance.all_logs(run.run_id)
            if record.dagster_event is not None
        )
        assert "gate.mode" in logs
