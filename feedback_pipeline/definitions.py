"""Assembles the one ``defs``: assets, checks, jobs and the local resources."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from feedback_pipeline.assets import assets
from feedback_pipeline.checks import asset_checks
from feedback_pipeline.jobs import jobs
from feedback_pipeline.resources import local_resources
from feedback_pipeline.schedules import schedules
from feedback_pipeline.sensors import sensors
from feedback_pipeline.settings import default_data_dir


def build_defs(data_dir: Path) -> dg.Definitions:
    """The project's Definitions over one data directory (tests use a tmp one)."""
    return dg.Definitions(
        assets=assets,
        asset_checks=asset_checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=local_resources(data_dir),
        # One DuckDB file has one writer: steps run in one process, one after another.
        executor=dg.in_process_executor,
    )


defs = build_defs(default_data_dir())
