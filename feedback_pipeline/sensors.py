"""Sensors: enough new labels -> retrain; new landing files -> ingest; failed retrain -> ledger."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import duckdb

from feedback_pipeline import ledger, triggers
from feedback_pipeline.jobs import full_retrain_job, ingest_job, retrain_job, retrain_run_config
from feedback_pipeline.registry import CHAMPION
from feedback_pipeline.resources import (
    LandingZoneResource,
    MlflowRegistryResource,
    SettingsResource,
    WarehouseResource,
)
from feedback_pipeline.schedules import TRIGGERS


@dg.sensor(
    name="new_labels_sensor",
    job=retrain_job,
    minimum_interval_seconds=TRIGGERS.new_labels_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrain once enough matured labels arrived after the data watermark.",
)
def new_labels_sensor(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
    settings: SettingsResource,
):
    threshold = settings.load().triggers.new_labels_threshold
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        with warehouse.connect(read_only=True, lock_timeout=0) as con:
            found = triggers.new_labels(con, mlflow_registry.get_registry(), threshold, now)
    except duckdb.IOException as error:  # a run holds the writer lock: look again next tick
        return dg.SkipReason(f"warehouse busy, will check again: {error}")
    watermark = found.watermark.isoformat() if found.watermark else "none (no model yet)"
    if not found.enough:
        return dg.SkipReason(
            f"{found.count} new labels since watermark {watermark}, threshold {threshold}"
        )
    as_of = now.isoformat() + "Z"
    context.log.info(f"{found.count} new labels since {watermark}: requesting a retrain")
    return dg.RunRequest(
        run_key=found.run_key,
        run_config=retrain_run_config(as_of),
        tags={
            "trigger": "new_labels",
            "as_of": as_of,
            "data_watermark": watermark,
            "new_labels": str(found.count),
        },
    )


@dg.sensor(
    name="landing_files_sensor",
    job=ingest_job,
    minimum_interval_seconds=TRIGGERS.landing_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ingest when files are added to or changed in the landing zone.",
)
def landing_files_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    signature, files = triggers.landing_signature(landing_zone.root)
    if files == 0:
        return dg.SkipReason(f"no files in {landing_zone.root}")
    if signature == context.cursor:
        return dg.SkipReason(f"no new or changed files among {files}")
    context.update_cursor(signature)
    return dg.RunRequest(run_key=f"landing:{signature}", tags={"trigger": "landing_files"})


@dg.run_failure_sensor(
    name="retrain_failure_sensor",
    monitored_jobs=[retrain_job, full_retrain_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records failed retrains in the promotion ledger.",
)
def retrain_failure_sensor(
    context: dg.RunFailureSensorContext,
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
):
    champion = mlflow_registry.get_registry().alias_version(CHAMPION)
    tags = context.dagster_run.tags
    with warehouse.connect() as con:
        ledger.append_event(
            con,
            "failed_retrain",
            f"run failed: {context.failure_event.message}",
            False,
            champion,
            champion,
            trigger=tags.get("trigger", "manual"),
            dagster_run_id=context.dagster_run.run_id,
        )


sensors = [new_labels_sensor, landing_files_sensor, retrain_failure_sensor]
