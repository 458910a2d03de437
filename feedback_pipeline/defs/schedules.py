"""Weekly retrain, monthly full retrain, daily analytics (section 13) and
monitoring (section 14); crons come from settings."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.defs.jobs import (
    analytics_job,
    full_retrain_job,
    monitoring_job,
    retrain_job,
)
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.settings import TriggerSettings

AssetJob = type(retrain_job)  # what define_asset_job returns (its class is not exported)


def scheduled_run(context: dg.ScheduleEvaluationContext, trigger: str, full: bool):
    """A run as of the scheduled time; the run key makes each tick fire once."""
    as_of = context.scheduled_execution_time.isoformat()
    return dg.RunRequest(
        run_key=f"{trigger}:{as_of}",
        run_config=run_context_config(as_of, full_retrain=full),
        tags={"trigger": trigger, "as_of": as_of},
    )


def as_of_schedule(
    name: str, cron: str, job: AssetJob, trigger: str, description: str,
    full: bool = False,
) -> dg.ScheduleDefinition:  # fmt: skip
    """``job`` on ``cron`` (UTC, on by default), as of each tick, tagged ``trigger``."""

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return scheduled_run(context, trigger, full)

    return schedule


def build_schedules(triggers: TriggerSettings) -> list[dg.ScheduleDefinition]:
    return [
        as_of_schedule(
            "weekly_retrain_schedule", triggers.weekly_cron, retrain_job, "weekly",
            "Retrain and gate every week, as of the scheduled time.",
        ),
        as_of_schedule(
            "monthly_full_retrain_schedule", triggers.monthly_cron, full_retrain_job, "monthly",
            "All families, the wider window and a hyperparameter search, monthly.", full=True,
        ),
        as_of_schedule(
            "daily_analytics_schedule", triggers.analytics_cron, analytics_job, "analytics",
            "Feedback stats, the A/B comparison and the next serving policy, daily.",
        ),
        as_of_schedule(
            "daily_monitoring_schedule", triggers.monitoring_cron, monitoring_job, "monitoring",
            "Feature drift, live performance and serving health, daily.",
        ),
    ]  # fmt: skip
