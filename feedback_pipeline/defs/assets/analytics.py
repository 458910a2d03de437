"""Feedback analytics and the serving policy."""

import dagster as dg
import numpy as np
import pandas as pd

from feedback_pipeline.analytics.ab_test import ab_compare
from feedback_pipeline.analytics.feedback_stats import feedback_stats as compute_feedback_stats
from feedback_pipeline.analytics.plots import fp_trend_png, reliability_png
from feedback_pipeline.defs.metadata import png_markdown
from feedback_pipeline.defs.resources import MlflowRegistryResource, WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.registry.model_registry import RegistryUnavailable
from feedback_pipeline.serving.policy.rows import load_policy_rows
from feedback_pipeline.serving.policy.stages import propose_policy
from feedback_pipeline.serving.policy.store import (
    PolicyError,
    active_policy,
    apply_policy,
    record_proposal,
)
from feedback_pipeline.warehouse.summaries import markdown

ANALYTICS = "analytics"


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name=ANALYTICS,
    kinds={"duckdb"},
    deps=["raw_predictions", "raw_feedback_events"],
)
def feedback_stats(
    warehouse: WarehouseResource, run_context: RunContextResource
) -> dg.MaterializeResult:
    """Weekly feedback figures per environment, model version and variant; the FP-rate trend,
    prod vs dev; effectiveness per segment; the note terms of good and bad labels."""
    settings = run_context.settings()
    with warehouse.connect(read_only=True) as con:
        stats = compute_feedback_stats(
            con, settings.labeling, settings.analytics, run_context.as_of_datetime()
        )
    return dg.MaterializeResult(
        metadata={
            "predictions": stats.predictions,
            "since": stats.since.isoformat(),
            "fp_rate_trend": png_markdown(fp_trend_png(stats.fp_trend), "weekly FP rate"),
            "weekly": dg.MetadataValue.md(markdown(stats.weekly, max_rows=60)),
            "segments": dg.MetadataValue.md(markdown(stats.segments, max_rows=60)),
            "note_terms": dg.MetadataValue.md(markdown(stats.note_terms)),
        }
    )


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name=ANALYTICS,
    kinds={"duckdb"},
    deps=["raw_predictions", "raw_feedback_events"],
)
def ab_comparison(
    warehouse: WarehouseResource, run_context: RunContextResource
) -> dg.MaterializeResult:
    """The configured A/B comparison (analytics.ab_*) on every metric, with a recommendation."""
    settings = run_context.settings()
    analytics = settings.analytics
    with warehouse.connect(read_only=True) as con:
        try:
            comparison = ab_compare(
                con,
                settings.labeling,
                analytics,
                run_context.as_of_datetime(),
                analytics.ab_control,
                analytics.ab_treatment,
                analytics.ab_metrics,
                analytics.ab_by,
            )
        except ValueError as error:
            raise dg.Failure(description=f"ab_comparison: {error}") from None
    table = pd.DataFrame([r.as_dict() for r in comparison.results])
    return dg.MaterializeResult(
        metadata={
            "comparison": f"{analytics.ab_by} {analytics.ab_treatment} vs {analytics.ab_control}",
            "results": dg.MetadataValue.md(markdown(table)),
            "recommendations": dg.MetadataValue.json(
                {r.metric: r.recommendation for r in comparison.results}
            ),
            "skipped": dg.MetadataValue.json(comparison.skipped),
        }
    )


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name=ANALYTICS,
    kinds={"mlflow", "duckdb"},
    deps=["champion_model", "labeled_outcomes"],
)
def serving_policy(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """Proposes the next serving policy (threshold, rule weights, recalibration, blend weight)
    for the champion; serves it only when serving.mode is apply and it beats the active policy
    on held-out rows."""
    settings = run_context.settings()
    registry = mlflow_registry.get_registry()
    with warehouse.connect() as con:
        try:
            rows, champion, run_id = load_policy_rows(
                con, registry, run_context.as_of_datetime(), settings.serving.lookback_days
            )
        except (PolicyError, RegistryUnavailable) as error:
            raise dg.Failure(description=str(error)) from None
        context.log.info(f"fitting the serving policy on {len(rows)} matured labels")
        proposal = propose_policy(rows, active_policy(con), run_id, settings.serving)
        version = record_proposal(con, proposal, champion, context.run.run_id)
        applied = settings.serving.mode == "apply" and proposal.changed and proposal.improves
        if applied:
            apply_policy(
                con,
                registry,
                version,
                f"serving.mode is apply; {proposal.verdict()}",
                "serving_policy",
                context.run.run_id,
            )
    if applied:
        decision = f"v{version} applied: {proposal.verdict()}"
    elif settings.serving.mode == "dry_run" and proposal.changed:
        decision = (
            f"v{version} proposed, not applied (dry run; `feedback-pipeline policy apply "
            f"{version} --reason ...` serves it): {proposal.verdict()}"
        )
    else:
        decision = f"v{version} proposed, not applied: {proposal.verdict()}"
    context.log.info(f"serving policy {decision}")
    return dg.MaterializeResult(
        metadata={
            "policy_version": version,
            "decision": decision,
            "champion_version": champion,
            "rows": len(rows),
            "stages": dg.MetadataValue.md(markdown(proposal.stage_table())),
            "held_out": dg.MetadataValue.md(
                markdown(
                    pd.DataFrame(
                        [proposal.before, proposal.after], index=["current", "proposed"]
                    ).reset_index()
                )
            ),
            "policy": dg.MetadataValue.json(proposal.policy.to_dict()),
            **(
                {
                    "reliability": png_markdown(
                        reliability_png(proposal.held_out_y, proposal.held_out_scores),
                        "reliability of the blended confidence, current vs proposed",
                    )
                }
                if len(np.unique(proposal.held_out_y)) == 2
                else {}
            ),
        }
    )
