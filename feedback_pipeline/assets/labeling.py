"""Stage 2: feedback events -> one label per prediction (DESIGN section 5)."""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from feedback_pipeline import reporting
from feedback_pipeline.labeling import (
    LABELED_OUTCOMES,
    build_labeled_outcomes,
    orphan_feedback_count,
)
from feedback_pipeline.resources import SettingsResource, WarehouseResource
from feedback_pipeline.settings import SettingsError, with_overrides


class LabelingConfig(dg.Config):
    """Per-run settings; anything unset comes from the deployment's settings."""

    as_of: str | None = Field(
        default=None, description="Point in time (ISO-8601, UTC if no zone); default: now."
    )
    settings_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Nested settings overrides, e.g. {labeling: {environments: [prod, dev]}}.",
    )


def parse_as_of(value: str | None) -> datetime:
    """ISO-8601 -> naive UTC datetime; None -> now."""
    if value is None:
        return datetime.now(UTC).replace(tzinfo=None)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise dg.Failure(f"as_of: {value!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


@dg.asset(group_name="labeling", kinds={"duckdb"}, deps=["raw_predictions", "raw_feedback_events"])
def labeled_outcomes(
    context: dg.AssetExecutionContext,
    config: LabelingConfig,
    warehouse: WarehouseResource,
    settings: SettingsResource,
) -> dg.MaterializeResult:
    """One row per prediction with a decisive feedback event: ``labeled.labeled_outcomes``."""
    try:
        labeling = with_overrides(settings.load(), config.settings_overrides).labeling
    except SettingsError as error:
        raise dg.Failure(description=str(error)) from None
    as_of = parse_as_of(config.as_of)
    with warehouse.connect() as con:
        rows = build_labeled_outcomes(con, labeling, as_of)
        by_source = reporting.labels_by_source_and_environment(con)
        orphans = orphan_feedback_count(con)
        preview = reporting.preview(con, LABELED_OUTCOMES, "labeled_at DESC, prediction_id")
    context.log.info(f"{rows} labeled predictions as of {as_of:%Y-%m-%d %H:%M:%S} UTC")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "as_of": as_of.isoformat(),
            "environments": ", ".join(labeling.environments),
            "orphan_feedback_events": orphans,
            "labels_by_source_and_environment": dg.MetadataValue.md(reporting.markdown(by_source)),
            "preview": dg.MetadataValue.md(preview),
        }
    )
