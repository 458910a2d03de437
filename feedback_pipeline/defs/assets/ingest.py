"""Stage 1: landing files -> `raw.*` tables."""

import dagster as dg
import pandas as pd

from feedback_pipeline.defs.resources import LandingZoneResource, WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.warehouse import summaries
from feedback_pipeline.warehouse.schema import KINDS


def ingest_and_describe(
    context: dg.AssetExecutionContext,
    kind: str,
    warehouse: WarehouseResource,
    landing_zone: LandingZoneResource,
    run_context: RunContextResource,
) -> dg.MaterializeResult:
    """Ingest every new file of `kind` and describe the result for the Dagster UI. The run
    context is validated when it starts (settings file, overrides, as_of), so a bad setting
    fails this first step before it writes anything."""
    spec = KINDS[kind]
    with warehouse.connect() as con:
        results = ingest_kind(con, landing_zone.root, kind, progress=context.log.info)
        new_files = pd.DataFrame([r.as_dict() for r in results if r.status != "skipped"])
        total_rows = con.execute(f"SELECT count(*) FROM {spec.table}").fetchall()[0][0]
        rejects = summaries.rejects_by_reason(con, kind)
        preview = summaries.preview(con, spec.table, f"ingested_at DESC, {spec.id_field}")
    this_run = new_files.sum(numeric_only=True) if len(new_files) else pd.Series(dtype=int)
    context.log.info(
        f"{kind}: {len(new_files)} new file(s), {len(results) - len(new_files)} already ingested"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(int(total_rows)),
            "as_of": run_context.as_of_datetime().isoformat(),
            "new_files": len(new_files),
            "records_read": int(this_run.get("records_read", 0)),
            "accepted": int(this_run.get("accepted", 0)),
            "duplicates": int(this_run.get("duplicates", 0)),
            "rejected": int(this_run.get("rejected", 0)),
            "files_this_run": dg.MetadataValue.md(
                summaries.markdown(new_files.drop(columns=["kind"], errors="ignore"), 50)
            ),
            "rejects_by_reason": dg.MetadataValue.md(summaries.markdown(rejects)),
            "preview": dg.MetadataValue.md(preview),
        }
    )


@dg.asset(pool=WAREHOUSE_POOL, group_name="ingestion", kinds={"duckdb"})
def raw_predictions(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing_zone: LandingZoneResource,
    run_context: RunContextResource,
) -> dg.MaterializeResult:
    """Scored items with their feature snapshot: `raw.predictions`."""
    return ingest_and_describe(context, "predictions", warehouse, landing_zone, run_context)


@dg.asset(pool=WAREHOUSE_POOL, group_name="ingestion", kinds={"duckdb"})
def raw_feedback_events(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing_zone: LandingZoneResource,
    run_context: RunContextResource,
) -> dg.MaterializeResult:
    """Accept/reject/undo/modify/export and trade outcomes: `raw.feedback_events`."""
    return ingest_and_describe(context, "feedback", warehouse, landing_zone, run_context)


@dg.asset(pool=WAREHOUSE_POOL, group_name="ingestion", kinds={"duckdb"})
def baseline_examples(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    landing_zone: LandingZoneResource,
    run_context: RunContextResource,
) -> dg.MaterializeResult:
    """Weak labels from an automatic labeler: `raw.baseline_examples`."""
    return ingest_and_describe(context, "baseline", warehouse, landing_zone, run_context)
