"""Run config shared by the assets that look at data as of a point in time."""

from datetime import datetime
from typing import Any

import dagster as dg
from pydantic import Field

from feedback_pipeline.settings import SettingsError, parse_as_of

# Every asset writes the one DuckDB file (and the retrain assets the registry aliases): runs that
# contain them share one pool, limited to 1 in dagster.yaml, so two runs never race.
WAREHOUSE_POOL = "feedback_pipeline_warehouse"


class PointInTimeConfig(dg.Config):
    """Per-run settings; anything unset comes from the deployment's settings."""

    as_of: str | None = Field(
        default=None, description="Point in time (ISO-8601, UTC if no zone); default: now."
    )
    settings_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Nested settings overrides, e.g. {labeling: {environments: [prod, dev]}}.",
    )

    def as_of_datetime(self) -> datetime:
        try:
            return parse_as_of(self.as_of)
        except SettingsError as error:
            raise dg.Failure(description=str(error)) from None


def trigger_of(context: dg.AssetExecutionContext) -> str:
    """What started this run: the ``trigger`` tag set by schedules and sensors, else manual."""
    return context.run.tags.get("trigger", "manual")
