"""One run context: the point in time and the settings every asset of a run sees.

Set once per run (the Launchpad's ``resources.run_context.config``, a schedule, a sensor, the CLI
or a test), so a run can never build labels as of one time and the training set as of another.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from feedback_pipeline.settings import (
    Settings,
    SettingsError,
    load_settings,
    parse_as_of,
    with_overrides,
)

# Every asset writes the one DuckDB file (and the retrain assets the registry aliases): runs that
# contain them share one pool, limited to 1 in dagster.yaml, so two runs never race.
WAREHOUSE_POOL = "feedback_pipeline_warehouse"


class RunContextResource(dg.ConfigurableResource):
    """``as_of`` and the settings (deployment file plus per-run overrides) of one run."""

    as_of: str | None = Field(
        default=None,
        description="Point in time (ISO-8601, UTC if no zone); default: when the run was created.",
    )
    settings_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Nested settings overrides, e.g. {gate: {mode: dry_run}} or "
        "{labeling: {environments: [prod, dev]}}.",
    )
    full_retrain: bool = Field(
        default=False,
        description="The monthly full retrain: every family, the wider window, a search.",
    )
    settings_file: str | None = Field(
        default=None, description="The deployment's YAML settings ($FEEDBACK_PIPELINE_SETTINGS)."
    )
    _run_created: datetime | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Pin "now" to the run's creation time, so every step (and a re-executed one) agrees,
        and validate the settings and ``as_of`` once, before any step of the run writes: a bad
        settings file fails the run's first steps, not the fourth after three committed."""
        run = context.run
        if run is not None and context.instance is not None:
            record = context.instance.get_run_record_by_id(run.run_id)
            if record is not None and record.create_timestamp is not None:
                created = record.create_timestamp
                self._run_created = created.astimezone(UTC).replace(tzinfo=None)
        self.settings()
        self.as_of_datetime()

    def as_of_datetime(self) -> datetime:
        """The run's point in time as naive UTC; a bad value fails the step naming the field."""
        if self.as_of is None and self._run_created is not None:
            return self._run_created
        try:
            return parse_as_of(self.as_of)
        except SettingsError as error:
            raise dg.Failure(description=f"run_context.{error}") from None

    def settings(self, extra_overrides: dict[str, Any] | None = None) -> Settings:
        """Deployment settings with this run's overrides; an invalid field fails the step."""
        try:
            settings = with_overrides(load_settings(self.settings_file), self.settings_overrides)
            return with_overrides(settings, extra_overrides) if extra_overrides else settings
        except SettingsError as error:
            raise dg.Failure(description=str(error)) from None

    def trigger(self, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
        """What started this run: the ``trigger`` tag set by schedules and sensors, else manual."""
        return context.run.tags.get("trigger", "manual")


def run_context_config(
    as_of: str | None = None,
    full_retrain: bool = False,
    settings_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run config that sets the run context (schedules, sensors, the CLI and tests use it)."""
    config: dict[str, Any] = {"full_retrain": full_retrain}
    if as_of is not None:
        config["as_of"] = as_of
    if settings_overrides:
        config["settings_overrides"] = settings_overrides
    return {"resources": {"run_context": {"config": config}}}
