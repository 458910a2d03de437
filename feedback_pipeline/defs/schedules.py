"""Weekly retrain, monthly full retrain (DESIGN section 9), daily analytics (section 13) and
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


def scheduled_retrain(context: dg.ScheduleEvaluationContext, trigger: str, full: bool):
    """A run as of the scheduled time; the run key makes each tick fire once."""
    as_of = context.scheduled_execution_time.isoformat()
    return dg.RunRequest(
        run_key=f"{trigger}:{as_of}",
        run_config=run_context_config(as_of, full_retrain=full),
        tags={"trigger": trigger, "as_of": as_of},
    )


def build_schedules(triggers: TriggerSettings) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name="weekly_retrain_schedule",
        cron_schedule=triggers.weekly_cron,
        job=retrain_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain and gate every week, as of the scheduled time.",
    )
    def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return scheduled_retrain(context, "weekly", full=False)

    @dg.schedule(
        name="monthly_full_retrain_schedule",
        cron_schedule=triggers.monthly_cron,
        job=full_retrain_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="All families, the wider window and a hyperparameter search, monthly.",
    )
    def monthly_full_retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return scheduled_retrain(context, "monthly", full=True)

    @dg.schedule(
        name="daily_analytics_schedule",
        cron_schedule=triggers.analytics_cron,
        job=analytics_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Feedback stats, the A/B comparison and the next serving policy, daily.",
    )
    def daily_analytics_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return scheduled_retrain(context, "analytics", full=False)

    @dg.schedule(
        name="daily_monitoring_schedule",
        cron_schedule=triggers.monitoring_cron,
        job=monitoring_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Feature drift, live performance and serving health, daily.",
    )
    def daily_monitoring_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return scheduled_retrain(context, "monitoring", full=False)

    return [
        weekly_retrain_schedule,
        monthly_full_retrain_schedule,
        daily_analytics_schedule,
        daily_monitoring_schedule,
    ]
