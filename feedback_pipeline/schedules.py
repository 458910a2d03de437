"""Weekly retrain and monthly full retrain (DESIGN section 9); crons come from settings."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.jobs import full_retrain_job, retrain_job, retrain_run_config
from feedback_pipeline.settings import load_settings

TRIGGERS = load_settings().triggers


def _scheduled_retrain(context: dg.ScheduleEvaluationContext, trigger: str, full: bool):
    as_of = context.scheduled_execution_time.isoformat()
    return dg.RunRequest(
        run_key=f"{trigger}:{as_of}",
        run_config=retrain_run_config(as_of, full=full),
        tags={"trigger": trigger, "as_of": as_of},
    )


@dg.schedule(
    name="weekly_retrain_schedule",
    cron_schedule=TRIGGERS.weekly_cron,
    job=retrain_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain and gate every week, as of the scheduled time.",
)
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _scheduled_retrain(context, "weekly", full=False)


@dg.schedule(
    name="monthly_full_retrain_schedule",
    cron_schedule=TRIGGERS.monthly_cron,
    job=full_retrain_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="All families, the wider window and a hyperparameter search, monthly.",
)
def monthly_full_retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _scheduled_retrain(context, "monthly", full=True)


schedules = [weekly_retrain_schedule, monthly_full_retrain_schedule]
