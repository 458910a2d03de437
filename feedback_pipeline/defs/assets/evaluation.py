"""Stages 5-6: the evaluation report and the champion."""

import dagster as dg

from feedback_pipeline.defs.resources import MlflowRegistryResource, WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.evaluation.report import StaleChallengersError
from feedback_pipeline.promotion.apply import apply_decision
from feedback_pipeline.promotion.judge import EvaluationReport, evaluate_and_judge
from feedback_pipeline.registry.model_registry import CHAMPION, MODEL_NAME, RegistryUnavailable
from feedback_pipeline.training.challengers import ChallengerRound


@dg.asset(pool=WAREHOUSE_POOL, group_name="evaluation", kinds={"mlflow"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    challenger_models: ChallengerRound,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[EvaluationReport]:
    """Challengers and the champion on the same holdout, then the gate's decision on them."""
    settings = run_context.settings()
    with warehouse.connect(read_only=True) as con:
        try:
            report = evaluate_and_judge(
                con,
                mlflow_registry.get_registry(),
                challenger_models,
                settings.gate,
                settings.models.seed,
                context.log.info,
            )
        except (StaleChallengersError, RegistryUnavailable) as error:
            raise dg.Failure(description=str(error)) from None
    tables = report.tables()
    return dg.Output(
        report,
        metadata={
            "as_of": report.as_of.isoformat(),
            "training_set_hash": report.training_set_hash,
            "decision": dg.MetadataValue.md(tables["decision"]),
            "holdout_metrics": dg.MetadataValue.md(tables["holdout_metrics"]),
            "deltas": dg.MetadataValue.md(tables["deltas"]),
            "promote": report.decision.promote,
            "refresh_champion_procedure": report.decision.refresh,
            "mode": report.mode,
            "best_challenger_version": report.best.challenger.version,
            "champion_version": str(report.champion_version),
        },
    )


@dg.asset(pool=WAREHOUSE_POOL, group_name="evaluation", kinds={"mlflow", "duckdb"})
def champion_model(
    context: dg.AssetExecutionContext,
    evaluation_report: EvaluationReport,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """Applies the decision: moves `champion`/`challenger` aliases, appends to the ledger."""
    with warehouse.connect() as con:
        change = apply_decision(
            con,
            mlflow_registry.get_registry(),
            evaluation_report,
            run_context.trigger(context),
            context.run.run_id,
            run_context.settings(),
            context.log.info,
        )
    context.log.info(f"champion: {change.old_version} -> {change.new_version} ({change.reason})")
    return dg.MaterializeResult(
        metadata={
            "as_of": evaluation_report.as_of.isoformat(),
            "champion_version": str(change.new_version),
            "previous_champion_version": str(change.old_version),
            "promoted": change.promoted,
            "reason": dg.MetadataValue.md(change.reason),
            "model_uri": f"models:/{MODEL_NAME}@{CHAMPION}",
        }
    )
