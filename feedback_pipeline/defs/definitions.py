"""Assembles the one ``defs``: assets, checks, jobs, schedules, sensors and local resources."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

from feedback_pipeline.defs.assets import assets
from feedback_pipeline.defs.checks import asset_checks
from feedback_pipeline.defs.jobs import jobs
from feedback_pipeline.defs.resources import local_resources
from feedback_pipeline.defs.schedules import build_schedules
from feedback_pipeline.defs.sensors import build_sensors
from feedback_pipeline.settings import (
    Settings,
    SettingsError,
    TriggerSettings,
    default_data_dir,
    load_settings,
)


def trigger_settings() -> Settings:
    """Crons and sensor intervals, which Dagster needs when it loads the code location.

    A bad settings file must not take the code location down: the triggers fall back to their
    defaults with a warning, and every run that loads the file fails naming the bad field."""
    try:
        return load_settings()
    except SettingsError as error:
        warnings.warn(f"{error}\n(schedules and sensors use their defaults)", stacklevel=2)
        return Settings()


def build_defs(data_dir: Path, triggers: TriggerSettings | None = None) -> dg.Definitions:
    """The project's Definitions over one data directory (tests use a tmp one)."""
    loaded = trigger_settings()
    triggers = triggers or loaded.triggers
    return dg.Definitions(
        assets=assets,
        asset_checks=asset_checks,
        jobs=jobs,
        schedules=build_schedules(triggers),
        sensors=build_sensors(triggers, loaded.monitoring.sensor_interval_seconds),
        resources=local_resources(data_dir),
        # One DuckDB file has one writer: steps run in one process, one after another.
        executor=dg.in_process_executor,
    )


defs = build_defs(default_data_dir())
