"""Stage 2: feedback events -> one label per prediction."""

import dagster as dg

from feedback_pipeline.defs.resources import WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.labels.outcomes import build_labeled_outcomes, orphan_feedback_count
from feedback_pipeline.warehouse import summaries
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="labeling",
    kinds={"duckdb"},
    deps=["raw_predictions", "raw_feedback_events"],
)
def labeled_outcomes(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
) -> dg.MaterializeResult:
    """One row per prediction with a decisive feedback event: `labeled.labeled_outcomes`."""
    labeling = run_context.settings().labeling
    as_of = run_context.as_of_datetime()
    with warehouse.connect() as con:
        rows = build_labeled_outcomes(con, labeling, as_of)
        by_source = summaries.labels_by_source_and_environment(con)
        orphans = orphan_feedback_count(con)
        preview = summaries.preview(con, LABELED_OUTCOMES, "labeled_at DESC, prediction_id")
    context.log.info(f"{rows} labeled predictions as of {as_of:%Y-%m-%d %H:%M:%S} UTC")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "as_of": as_of.isoformat(),
            "environments": ", ".join(labeling.environments),
            "orphan_feedback_events": orphans,
            "labels_by_source_and_environment": dg.MetadataValue.md(summaries.markdown(by_source)),
            "preview": dg.MetadataValue.md(preview),
        }
    )
