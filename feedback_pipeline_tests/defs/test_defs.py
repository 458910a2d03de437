"""The Definitions load and hold what the README promises."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from feedback_pipeline.defs.checks import asset_checks
from feedback_pipeline.defs.definitions import build_defs, defs
from feedback_pipeline.settings import SETTINGS_ENV_VAR

INGEST_ASSETS = {"raw_predictions", "raw_feedback_events", "baseline_examples", "labeled_outcomes"}
RETRAIN_ASSETS = INGEST_ASSETS | {
    "training_set",
    "challenger_models",
    "evaluation_report",
    "champion_model",
}
ANALYTICS_ASSETS = {"feedback_stats", "ab_comparison", "serving_policy"}
MONITORING_ASSETS = {"feature_drift", "live_performance", "serving_health"}
ASSETS = RETRAIN_ASSETS | ANALYTICS_ASSETS | MONITORING_ASSETS | {"backtest_report"}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_assets_and_groups():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ASSETS
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_predictions"] == "ingestion"
    assert groups["labeled_outcomes"] == "labeling"
    assert groups["challenger_models"] == "training"
    assert groups["champion_model"] == "evaluation"
    assert groups["backtest_report"] == "backtest"
    assert {groups[name] for name in ANALYTICS_ASSETS} == {"analytics"}
    assert {groups[name] for name in MONITORING_ASSETS} == {"monitoring"}


def asset_nodes(job_name: str) -> set[str]:
    return {n.name for n in defs.resolve_job_def(job_name).graph.node_defs} & ASSETS


def test_jobs_select_the_right_assets():
    assert asset_nodes("ingest_job") == INGEST_ASSETS
    assert asset_nodes("retrain_job") == RETRAIN_ASSETS
    assert asset_nodes("full_retrain_job") == RETRAIN_ASSETS
    assert asset_nodes("backtest_job") == {"backtest_report"}
    assert asset_nodes("analytics_job") == ANALYTICS_ASSETS
    assert asset_nodes("monitoring_job") == MONITORING_ASSETS


def test_schedules_run_the_retrains_and_the_daily_analytics():
    schedules = {s.name: (s.job_name, s.cron_schedule) for s in defs.schedules}
    assert schedules == {
        "weekly_retrain_schedule": ("retrain_job", "0 3 * * 1"),
        "monthly_full_retrain_schedule": ("full_retrain_job", "0 4 1 * *"),
        "daily_analytics_schedule": ("analytics_job", "0 5 * * *"),
        "daily_monitoring_schedule": ("monitoring_job", "30 5 * * *"),
    }


def test_sensors_and_their_jobs():
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {
        "new_labels_sensor",
        "landing_files_sensor",
        "monitoring_sensor",
        "retrain_failure_sensor",
    }
    assert sensors["monitoring_sensor"].job_name == "retrain_job"
    assert sensors["monitoring_sensor"].minimum_interval_seconds == 300
    assert sensors["new_labels_sensor"].job_name == "retrain_job"


def test_full_retrain_job_runs_all_families_over_the_wide_window_by_default():
    config = defs.resolve_job_def("full_retrain_job").config_mapping
    resolved = config.resolve_from_unvalidated_config({})
    assert resolved["resources"]["run_context"]["config"]["full_retrain"] is True


def test_checks_exist_and_the_right_ones_block():
    specs = {
        (spec.asset_key.to_user_string(), spec.name): spec.blocking
        for checks in asset_checks
        for spec in checks.check_specs
    }
    blocking = {key for key, blocks in specs.items() if blocks}
    assert blocking == {
        ("raw_predictions", "records_accounted_for"),
        ("raw_feedback_events", "records_accounted_for"),
        ("baseline_examples", "records_accounted_for"),
        ("labeled_outcomes", "labels_are_valid"),
        ("training_set", "training_set_is_usable"),
    }
    assert set(specs) - blocking == {
        ("raw_predictions", "landing_files_readable"),
        ("raw_feedback_events", "landing_files_readable"),
        ("baseline_examples", "landing_files_readable"),
    }
    graph = defs.resolve_asset_graph()
    # The monitoring assets report their own WARN checks with their numbers.
    monitoring = {
        ("feature_drift", "no_drift_over_threshold"),
        ("serving_health", "mean_latency_within_sla"),
        ("serving_health", "fallback_rate_within_sla"),
    }
    graph_checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert graph_checks == set(specs) | monitoring


def test_a_bad_settings_file_fails_the_runs_not_the_code_location(tmp_path, instance, monkeypatch):
    bad = tmp_path / "settings.yaml"
    bad.write_text("labeling:\n  environmentz: [prod]\n")
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(bad))
    with pytest.warns(UserWarning, match="labeling.environmentz"):
        loaded = build_defs(tmp_path)
    dg.Definitions.validate_loadable(loaded)
    assert loaded.resolve_schedule_def("weekly_retrain_schedule").cron_schedule == "0 3 * * 1"
    result = loaded.resolve_job_def("ingest_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    # Validated once, when the run context starts: no step ran, none wrote a thing.
    assert not [e for e in result.all_events if e.is_step_start or e.is_step_success]
    (failure,) = [e for e in result.all_events if e.is_resource_init_failure]
    assert "labeling.environmentz" in str(failure.engine_event_data.error)


# What a step imports when it runs, never when the code location loads: every sensor tick's code
# server, every run worker and `dagster dev` load the definitions first (6.2 s with them, 2.6 s
# without, on this machine).
STEP_LIBRARIES = ("mlflow", "sklearn", "scipy", "statsmodels", "xgboost", "matplotlib", "dask")


def test_the_code_location_loads_without_the_libraries_its_steps_use():
    script = (
        "import sys, feedback_pipeline.definitions\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({STEP_LIBRARIES!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
