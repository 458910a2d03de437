"""Sensors: enough new labels, or drift / degradation that holds -> retrain; new landing files ->
ingest; failed retrain -> ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from feedback_pipeline.defs.jobs import full_retrain_job, ingest_job, retrain_job
from feedback_pipeline.defs.resources import (
    LandingZoneResource,
    MlflowRegistryResource,
    WarehouseResource,
)
from feedback_pipeline.defs.run_context import RunContextResource, run_context_config
from feedback_pipeline.ingest.landing_files import unseen_files
from feedback_pipeline.monitoring import drift, triggers
from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.apply import reconcile
from feedback_pipeline.promotion.lock import promotion_lock
from feedback_pipeline.registry.model_registry import RegistryUnavailable
from feedback_pipeline.settings import TriggerSettings
from feedback_pipeline.warehouse.connection import is_lock_error


def warehouse_busy(error: duckdb.IOException) -> dg.SkipReason:
    """A sensor's read-only look found a run holding the writer lock: skip, look again next
    tick. Any other error (not a database, unreadable) fails the tick and says so."""
    if not is_lock_error(error):
        raise error
    return dg.SkipReason(f"warehouse busy, will check again: {error}")


def new_labels_request(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
    run_context: RunContextResource,
) -> dg.RunRequest | dg.SkipReason:
    """A retrain once enough matured labels arrived after the data watermark."""
    threshold = run_context.settings().triggers.new_labels_threshold
    now = datetime.now(UTC).replace(tzinfo=None)
    registry = mlflow_registry.get_registry()  # an MLflow outage fails the tick, loudly
    try:
        with warehouse.connect(read_only=True, lock_timeout=0) as con:
            found = triggers.new_labels(con, registry, threshold, now)
    except duckdb.IOException as error:
        return warehouse_busy(error)
    watermark = found.watermark.isoformat() if found.watermark else "none (no model yet)"
    if not found.enough:
        return dg.SkipReason(
            f"{found.count} new labels since watermark {watermark}, threshold {threshold}"
        )
    as_of = now.isoformat() + "Z"
    context.log.info(f"{found.count} new labels since {watermark}: requesting a retrain")
    return dg.RunRequest(
        run_key=found.run_key,
        run_config=run_context_config(as_of),
        tags={
            "trigger": "new_labels",
            "as_of": as_of,
            "data_watermark": watermark,
            "new_labels": str(found.count),
        },
    )


def monitoring_request(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
    run_context: RunContextResource,
) -> dg.RunRequest | dg.SkipReason:
    """A retrain when drift or a drop in live accuracy holds for k of the last n windows after
    the champion's as_of; keyed by champion and window, so one episode asks once."""
    settings = run_context.settings().monitoring
    now = run_context.as_of_datetime()
    try:
        reference = drift.champion_reference(mlflow_registry.get_registry(), settings)
    except drift.NoChampion as error:
        return dg.SkipReason(str(error))
    try:
        with warehouse.connect(read_only=True, lock_timeout=0) as con:
            verdicts, _ = drift.judge_windows(con, reference, now, settings)
    except duckdb.IOException as error:
        return warehouse_busy(error)
    due = drift.retrain_due(verdicts, reference, settings)
    if not due.due:
        return dg.SkipReason(due.reason)
    as_of = now.isoformat() + "Z"
    context.log.info(f"requesting a retrain: {due.reason}")
    return dg.RunRequest(
        run_key=due.run_key,
        run_config=run_context_config(as_of),
        tags={"trigger": "monitoring", "as_of": as_of, "champion": reference.champion_version},
    )


def build_sensors(
    triggers_settings: TriggerSettings, monitoring_interval_seconds: int = 300
) -> list[dg.SensorDefinition]:
    @dg.sensor(
        name="new_labels_sensor",
        job=retrain_job,
        minimum_interval_seconds=triggers_settings.new_labels_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrain once enough matured labels arrived after the data watermark.",
    )
    def new_labels_sensor(
        context: dg.SensorEvaluationContext,
        warehouse: WarehouseResource,
        mlflow_registry: MlflowRegistryResource,
        run_context: RunContextResource,
    ):
        return new_labels_request(context, warehouse, mlflow_registry, run_context)

    @dg.sensor(
        name="landing_files_sensor",
        job=ingest_job,
        minimum_interval_seconds=triggers_settings.landing_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Ingest when files are added to or changed in the landing zone.",
    )
    def landing_files_sensor(
        context: dg.SensorEvaluationContext,
        landing_zone: LandingZoneResource,
        warehouse: WarehouseResource,
    ):
        return landing_files_request(context, landing_zone, warehouse)

    @dg.sensor(
        name="monitoring_sensor",
        job=retrain_job,
        minimum_interval_seconds=monitoring_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrain when drift or a drop in live accuracy holds for k of the last n "
        "windows after the champion's as_of (settings: monitoring).",
    )
    def monitoring_sensor(
        context: dg.SensorEvaluationContext,
        warehouse: WarehouseResource,
        mlflow_registry: MlflowRegistryResource,
        run_context: RunContextResource,
    ):
        return monitoring_request(context, warehouse, mlflow_registry, run_context)

    # Every code location's runs, filtered by job name in ledger_failed_retrain: runs started
    # outside the daemon (`dagster job execute`, a killed one that run monitoring marked
    # failed) carry no code location, and a sensor that monitors only its own never sees them.
    @dg.run_failure_sensor(
        name="retrain_failure_sensor",
        monitor_all_code_locations=True,
        minimum_interval_seconds=triggers_settings.failure_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records failed retrains in the promotion ledger.",
    )
    def retrain_failure_sensor(
        context: dg.RunFailureSensorContext,
        warehouse: WarehouseResource,
        mlflow_registry: MlflowRegistryResource,
    ):
        return ledger_failed_retrain(context, warehouse, mlflow_registry)

    return [new_labels_sensor, landing_files_sensor, monitoring_sensor, retrain_failure_sensor]


def landing_files_request(
    context: dg.SensorEvaluationContext,
    landing_zone: LandingZoneResource,
    warehouse: WarehouseResource,
) -> dg.RunRequest | dg.SkipReason:
    """An ingest run when files were added to or changed in the landing zone. With no cursor
    yet (a new daemon, a reset sensor) the manifest decides: a restart must not queue an
    ingest of nothing new ahead of the next retrain."""
    signature, files = triggers.landing_signature(landing_zone.root)
    if files == 0:
        return dg.SkipReason(f"no files in {landing_zone.root}")
    if signature == context.cursor:
        return dg.SkipReason(f"no new or changed files among {files}")
    if context.cursor is None and Path(warehouse.path).exists():
        try:
            with warehouse.connect(read_only=True, lock_timeout=0) as con:
                unseen: int | None = unseen_files(con, landing_zone.root)
        except duckdb.Error as error:
            if is_lock_error(error):
                return warehouse_busy(error)
            # An older manifest, a damaged file: the ingest run upgrades or reports it.
            context.log.warning(f"could not read the ingest manifest ({error}); ingesting")
            unseen = None
        if unseen == 0:
            context.update_cursor(signature)
            return dg.SkipReason(f"all {files} landing files are already ingested")
    context.update_cursor(signature)
    return dg.RunRequest(run_key=f"landing:{signature}", tags={"trigger": "landing_files"})


RETRAIN_JOBS = (retrain_job.name, full_retrain_job.name)


def ledger_failed_retrain(
    context: dg.RunFailureSensorContext,
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.SkipReason | None:
    """A failed retrain's ledger row (after a repair row, if it died past its alias move)."""
    if context.dagster_run.job_name not in RETRAIN_JOBS:
        return dg.SkipReason(f"{context.dagster_run.job_name} is not a retrain")
    reason = f"run failed: {context.failure_event.message}"
    tags = context.dagster_run.tags
    with warehouse.connect() as con, promotion_lock(con):
        try:  # a run killed after its alias move is recorded first, as a repair
            champion = reconcile(
                con, mlflow_registry.get_registry(), "failure_sensor", context.dagster_run.run_id
            )
        except RegistryUnavailable as error:  # recorded, with the champion unknown, not guessed
            champion = None
            reason += f" (champion unknown: {error})"
        ledger.append_event(
            con,
            "failed_retrain",
            reason,
            False,
            champion,
            champion,
            trigger=tags.get("trigger", "manual"),
            dagster_run_id=context.dagster_run.run_id,
        )
