"""End to end: ingest_job on simulated data, a real Dagster instance, a real DuckDB file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline.warehouse import summaries as reporting

ROW_TABLES = (
    "raw.predictions",
    "raw.feedback_events",
    "raw.baseline_examples",
    "raw.rejected_records",
    "raw.ingested_files",
    "labeled.labeled_outcomes",
)


def table_rows(data_dir: Path) -> dict[str, int]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ROW_TABLES}
    finally:
        con.close()


def run_ingest_job(data_dir: Path, instance: dg.DagsterInstance, **run_config):
    job = build_defs(data_dir).resolve_job_def("ingest_job")
    return job.execute_in_process(instance=instance, run_config=run_config or None)


def test_ingest_job_end_to_end_and_rerun_adds_no_rows(data_dir, instance):
    simulate(
        data_dir / "landing",
        SimulationConfig(days=12, predictions_per_day=150, baseline_per_day=60, bad_rate=0.03),
    )
    result = run_ingest_job(data_dir, instance)
    assert result.success
    checks = result.get_asset_check_evaluations()
    blocking = [c for c in checks if c.blocking]
    assert len(blocking) == 4 and all(check.passed for check in blocking)
    # The simulator drops a .txt file of unsupported format in every folder: a WARN, named.
    warnings = {c.asset_key.to_user_string(): c for c in checks if not c.blocking}
    assert set(warnings) == {"raw_predictions", "raw_feedback_events", "baseline_examples"}
    for check in warnings.values():
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert "unsupported file extension '.txt'" in check.description

    rows = table_rows(data_dir)
    assert rows["raw.predictions"] > 1500
    assert rows["raw.rejected_records"] > 0
    assert rows["labeled.labeled_outcomes"] > 500

    materialization = result.asset_materializations_for_node("raw_predictions")[0]
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == rows["raw.predictions"]
    assert "| reason" in metadata["rejects_by_reason"].value
    assert metadata["records_read"].value == (
        metadata["accepted"].value + metadata["duplicates"].value + metadata["rejected"].value
    )

    again = run_ingest_job(data_dir, instance)
    assert again.success
    assert table_rows(data_dir) == rows
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    for kind in ("predictions", "feedback", "baseline"):
        assert reporting.accounting_violations(con, kind).empty
    con.close()


def test_run_config_sets_as_of_and_environments(data_dir, instance):
    simulate(data_dir / "landing", SimulationConfig(days=6, predictions_per_day=100))
    config = run_context_config("2026-01-07T00:00:00Z")
    assert run_ingest_job(data_dir, instance, **config).success
    early = table_rows(data_dir)["labeled.labeled_outcomes"]
    config = run_context_config(settings_overrides={"labeling": {"environments": ["prod", "dev"]}})
    assert run_ingest_job(data_dir, instance, **config).success
    assert table_rows(data_dir)["labeled.labeled_outcomes"] > early


def test_bad_run_config_names_the_field(data_dir, instance):
    config = run_context_config(settings_overrides={"labeling": {"environmentz": ["prod"]}})
    result = (
        build_defs(data_dir)
        .resolve_job_def("ingest_job")
        .execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_resource_init_failure]
    assert "labeling.environmentz" in str(failure.engine_event_data.error)


def test_dagster_cli_runs_ingest_job_with_data_dir_anywhere(tmp_path):
    data_dir = tmp_path / "elsewhere"
    simulate(data_dir / "landing", SimulationConfig(days=3, predictions_per_day=50))
    env = {
        **os.environ,
        "FEEDBACK_PIPELINE_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "home").mkdir()
    dagster = Path(sys.executable).parent / "dagster"
    completed = subprocess.run(
        [str(dagster), "job", "execute", "-m", "feedback_pipeline.definitions", "-j", "ingest_job"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert table_rows(data_dir)["raw.predictions"] > 100


def test_a_mistyped_data_dir_warns_instead_of_running_green_silently(tmp_path, instance):
    """No landing zone at all: the run still succeeds (nothing to ingest is not an error), but
    each kind's WARN check fails and says to look at FEEDBACK_PIPELINE_DATA_DIR."""
    result = run_ingest_job(tmp_path / "no_such_dir", instance)
    assert result.success
    warnings = [c for c in result.get_asset_check_evaluations() if not c.blocking]
    assert len(warnings) == 3
    for check in warnings:
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert "does not exist: is FEEDBACK_PIPELINE_DATA_DIR right?" in check.description
