"""Schedules and sensors evaluated with build_*_context on a real instance, warehouse and
MLflow registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from feedback_pipeline.defs.definitions import build_defs, defs
from feedback_pipeline.defs.resources import local_resources
from feedback_pipeline.defs.run_context import RunContextResource, run_context_config
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.monitoring.triggers import data_watermark
from feedback_pipeline.promotion import ledger
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import (
    SAMPLE_AS_OF,
    SAMPLE_LANDING,
    SIMULATED_AS_OF,
    prediction,
)
from feedback_pipeline_tests.training.test_model_behaviour import retrain

weekly_retrain_schedule = defs.resolve_schedule_def("weekly_retrain_schedule")
monthly_full_retrain_schedule = defs.resolve_schedule_def("monthly_full_retrain_schedule")
new_labels_sensor = defs.resolve_sensor_def("new_labels_sensor")
landing_files_sensor = defs.resolve_sensor_def("landing_files_sensor")
retrain_failure_sensor = defs.resolve_sensor_def("retrain_failure_sensor")


def test_schedules_exist_with_the_design_crons():
    assert defs.resolve_schedule_def("weekly_retrain_schedule").cron_schedule == "0 3 * * 1"
    assert defs.resolve_schedule_def("monthly_full_retrain_schedule").cron_schedule == "0 4 1 * *"
    for name in ("weekly_retrain_schedule", "monthly_full_retrain_schedule"):
        assert defs.resolve_schedule_def(name).execution_timezone == "UTC"
    sensors = {s.name for s in defs.sensors}
    assert sensors == {
        "new_labels_sensor",
        "landing_files_sensor",
        "monitoring_sensor",
        "retrain_failure_sensor",
    }


@pytest.mark.parametrize(
    ("schedule", "job", "trigger", "full"),
    [
        (weekly_retrain_schedule, "retrain_job", "weekly", False),
        (monthly_full_retrain_schedule, "full_retrain_job", "monthly", True),
    ],
)
def test_schedules_pass_the_scheduled_time_as_as_of(instance, schedule, job, trigger, full):
    when = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    request = schedule.evaluate_tick(context).run_requests[0]
    as_of = "2026-03-02T03:00:00+00:00"
    assert request.tags["trigger"] == trigger and request.tags["as_of"] == as_of
    # One run context for every asset of the run: one as_of, one full-retrain flag.
    assert request.run_config == {
        "resources": {"run_context": {"config": {"as_of": as_of, "full_retrain": full}}}
    }
    assert request.run_key == f"{trigger}:{as_of}"
    dg.validate_run_config(defs.resolve_job_def(job), request.run_config)


def sensor_context(instance, data_dir: Path, threshold: int, cursor: str | None = None):
    settings_file = data_dir / "settings.yaml"
    settings_file.write_text(f"triggers:\n  new_labels_threshold: {threshold}\n")
    resources = {
        **local_resources(data_dir),
        "run_context": RunContextResource(settings_file=str(settings_file)),
    }
    return dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)


def labels_after(data_dir: Path, watermark: datetime | None) -> int:
    con = warehouse.connect(data_dir / "warehouse.duckdb", read_only=True)
    try:
        return con.execute(
            "SELECT count(*) FROM labeled.labeled_outcomes WHERE labeled_at > ?",
            [watermark or datetime(1970, 1, 1)],
        ).fetchall()[0][0]
    finally:
        con.close()


def test_new_labels_sensor_skips_below_and_fires_at_the_threshold(instance, simulated_dir):
    count = labels_after(simulated_dir, None)
    below = new_labels_sensor(sensor_context(instance, simulated_dir, count + 1))
    assert isinstance(below, dg.SkipReason)
    assert f"{count} new labels" in below.skip_message
    assert f"threshold {count + 1}" in below.skip_message

    at = new_labels_sensor(sensor_context(instance, simulated_dir, count))
    assert isinstance(at, dg.RunRequest)
    assert at.run_key == "new_labels:none"
    assert at.tags["trigger"] == "new_labels" and at.tags["new_labels"] == str(count)
    dg.validate_run_config(defs.resolve_job_def("retrain_job"), at.run_config)


def test_the_same_watermark_never_fires_twice(instance, simulated_dir):
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    registry = local_registry(simulated_dir)
    a_week_earlier = SIMULATED_AS_OF - timedelta(days=7)  # then a week of labels arrives
    build_labeled_outcomes(con, Settings().labeling, a_week_earlier)
    build_training_set(con, Settings().training, discover_features(con, None), a_week_earlier)
    retrain(con, registry)
    build_labeled_outcomes(con, Settings().labeling, SIMULATED_AS_OF)
    con.close()
    watermark = data_watermark(registry)  # the one the sensor and `status` use
    count = labels_after(simulated_dir, watermark)
    assert count > 0

    first = new_labels_sensor(sensor_context(instance, simulated_dir, count))
    second = new_labels_sensor(sensor_context(instance, simulated_dir, count))
    assert isinstance(first, dg.RunRequest) and isinstance(second, dg.RunRequest)
    assert first.run_key == second.run_key == f"new_labels:{watermark.isoformat()}"
    assert isinstance(
        new_labels_sensor(sensor_context(instance, simulated_dir, count + 1)), dg.SkipReason
    )


def test_landing_sensor_fires_on_new_files_and_not_on_a_rerun(instance, data_dir, write_landing):
    empty = landing_files_sensor(sensor_context(instance, data_dir, 500))
    assert isinstance(empty, dg.SkipReason)

    write_landing("predictions", "a.jsonl", [prediction("a")])
    context = sensor_context(instance, data_dir, 500)
    first = landing_files_sensor(context)
    assert isinstance(first, dg.RunRequest) and first.tags["trigger"] == "landing_files"
    cursor = context.cursor

    again = landing_files_sensor(sensor_context(instance, data_dir, 500, cursor=cursor))
    assert isinstance(again, dg.SkipReason)

    write_landing("feedback", "f.jsonl", [{"event_id": "e"}])
    later = sensor_context(instance, data_dir, 500, cursor=cursor)
    fired = landing_files_sensor(later)
    assert isinstance(fired, dg.RunRequest)
    assert fired.run_key != first.run_key and later.cursor != cursor


HOLD_THE_WAREHOUSE = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_fresh_sensor_skips_files_the_warehouse_already_ingested(instance, simulated_dir):
    """A daemon that starts (no cursor yet) must not queue an ingest of nothing new ahead of
    the next retrain: it asks the manifest first."""
    context = sensor_context(instance, simulated_dir, 500)
    skipped = landing_files_sensor(context)
    assert isinstance(skipped, dg.SkipReason), skipped
    assert "are already ingested" in skipped.skip_message
    assert context.cursor  # from now on the signature alone decides
    late = simulated_dir / "landing" / "predictions" / "late.jsonl"
    late.write_text(json.dumps(prediction("late-1")) + "\n")
    assert isinstance(
        landing_files_sensor(sensor_context(instance, simulated_dir, 500)), dg.RunRequest
    )
    holder = subprocess.Popen(  # a run in another process holds the warehouse's write lock
        [sys.executable, "-c", HOLD_THE_WAREHOUSE, str(simulated_dir / "warehouse.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        busy = landing_files_sensor(fresh := sensor_context(instance, simulated_dir, 500))
    finally:
        holder.kill()
        holder.wait()
    assert isinstance(busy, dg.SkipReason) and "warehouse busy" in busy.skip_message
    assert fresh.cursor is None  # looked again next tick


def test_a_fresh_sensor_that_cannot_read_the_manifest_asks_for_an_ingest(
    instance, data_dir, write_landing
):
    """Not a lock: a file that is no database (or a manifest of an older schema) is the ingest
    run's to upgrade or report, never a "busy" skip on every tick."""
    write_landing("predictions", "a.jsonl", [prediction("a")])
    (data_dir / "warehouse.duckdb").write_bytes(b"not a duckdb file" * 64)
    request = landing_files_sensor(sensor_context(instance, data_dir, 500))
    assert isinstance(request, dg.RunRequest), request


def test_a_warehouse_that_is_no_database_fails_the_labels_tick_not_skips_it(instance, data_dir):
    """Only a held lock is "busy": a file that is no database would be skipped on every tick."""
    (data_dir / "warehouse.duckdb").write_bytes(b"not a duckdb file" * 64)
    with pytest.raises(duckdb.IOException, match="not a valid DuckDB database"):
        new_labels_sensor(sensor_context(instance, data_dir, 500))


def test_failed_retrain_is_recorded_in_the_ledger(instance, data_dir):
    # No data at all: the retrain fails (nothing to train on).
    result = (
        build_defs(data_dir)
        .resolve_job_def("retrain_job")
        .execute_in_process(instance=instance, raise_on_error=False, tags={"trigger": "weekly"})
    )
    assert not result.success
    failure = next(
        entry.dagster_event
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event and entry.dagster_event.is_run_failure
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="retrain_failure_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=local_resources(data_dir),
    ).for_run_failure()
    retrain_failure_sensor(context)
    con = warehouse.connect(data_dir / "warehouse.duckdb", read_only=True)
    events = ledger.recent_events(con)
    con.close()
    assert events["action"].tolist() == ["failed_retrain"]
    assert events["trigger"].tolist() == ["weekly"]
    assert "run failed" in events["reason"].iloc[0]
    assert local_registry(data_dir).alias_version(CHAMPION) is None


def test_after_the_demo_the_sensor_skips_then_fires_on_600_new_outcomes(instance, data_dir):
    """The README's story: `make demo`, then 600 newly labeled outcomes land and are ingested."""
    shutil.copytree(
        SAMPLE_LANDING,
        data_dir / "landing",
        dirs_exist_ok=True,
    )
    job_defs = build_defs(data_dir)
    demo = job_defs.resolve_job_def("retrain_job").execute_in_process(
        instance=instance, run_config=run_context_config(SAMPLE_AS_OF)
    )
    assert demo.success
    assert local_registry(data_dir).alias_version(CHAMPION) is not None

    skipped = new_labels_sensor(
        dg.build_sensor_context(instance=instance, resources=local_resources(data_dir))
    )
    assert isinstance(skipped, dg.SkipReason)
    assert "threshold 500" in skipped.skip_message

    new_predictions = [
        prediction(
            f"new-{i}",
            predicted_at="2026-02-23T10:00:00Z",
            features={"momentum": i % 7 - 3.0, "rsi": 0.5},
        )
        for i in range(600)
    ]
    outcomes = [
        {
            "event_id": f"new-{i}-o",
            "prediction_id": f"new-{i}",
            "event_type": "outcome",
            "outcome": "win" if i % 2 else "loss",
            "occurred_at": "2026-02-25T10:00:00Z",
        }
        for i in range(600)
    ]
    (data_dir / "landing" / "predictions" / "new.jsonl").write_text(
        "\n".join(json.dumps(r) for r in new_predictions) + "\n"
    )
    (data_dir / "landing" / "feedback" / "new.jsonl").write_text(
        "\n".join(json.dumps(r) for r in outcomes) + "\n"
    )
    assert job_defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success

    fired = new_labels_sensor(
        dg.build_sensor_context(instance=instance, resources=local_resources(data_dir))
    )
    assert isinstance(fired, dg.RunRequest), fired
    assert int(fired.tags["new_labels"]) >= 600
