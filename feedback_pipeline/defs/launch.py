"""Running a job of ``defs`` in this process, for the demo and the CLI (no Dagster import
outside this package)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from feedback_pipeline.defs.definitions import defs


@dataclass(frozen=True)
class JobOutcome:
    success: bool
    run_id: str
    errors: list[str]  # each failed step's message


def run_job(
    job_name: str,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "WARNING",
) -> JobOutcome:
    """Run ``job_name`` on the instance of ``$DAGSTER_HOME``, so the run shows in the UI."""
    config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config=config, tags=tags or {}, raise_on_error=False
        )
    errors = [
        event.step_failure_data.error.message
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    ]
    return JobOutcome(result.success, result.run_id, errors)
