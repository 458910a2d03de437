"""Stages 3-4: the blended training set and the challengers."""

import dagster as dg

from feedback_pipeline.defs.resources import MlflowRegistryResource, WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.registry.model_registry import CHAMPION, MODEL_NAME, RegistryUnavailable
from feedback_pipeline.retrain import training_set_as_of
from feedback_pipeline.settings import with_overrides
from feedback_pipeline.training.challengers import ChallengerRound, train_challengers
from feedback_pipeline.training.dataset import TrainingSetError, TrainingSetInfo
from feedback_pipeline.warehouse.summaries import markdown


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="training",
    kinds={"duckdb"},
    deps=["labeled_outcomes", "baseline_examples"],
)
def training_set(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
) -> dg.Output[TrainingSetInfo]:
    """Feedback rows weighted above weak baseline labels, time-split, stored under its content
    hash; what it hands on names that set, so a concurrent run never swaps it."""
    settings = run_context.settings()
    if run_context.full_retrain:
        settings = with_overrides(
            settings, {"training": {"lookback_days": settings.full_retrain.lookback_days}}
        )
    training = settings.training
    as_of = run_context.as_of_datetime()
    with warehouse.connect() as con:
        try:  # the labels are the labeled_outcomes asset's: built as of the same time
            summary = training_set_as_of(con, settings, as_of, MODEL_NAME, labels=False)
        except TrainingSetError as error:
            raise dg.Failure(description=str(error)) from None
    features = summary.info.features
    info = summary.info
    context.log.info(f"training set as of {as_of}: {info.rows} rows, {len(features)} features")
    return dg.Output(
        info,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(info.rows),
            "as_of": as_of.isoformat(),
            "window_start": info.window_start.isoformat(),
            "content_hash": info.content_hash,
            "data_watermark": str(info.data_watermark),
            "features": ", ".join(features),
            "outcome_weight": training.outcome_weight,
            "quarantined_weeks": ", ".join(f"{w:%Y-%m-%d}" for w in summary.quarantined) or "none",
            "rows_by_split_and_source": dg.MetadataValue.md(markdown(summary.counts)),
        },
    )


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="training",
    kinds={"mlflow", "xgboost", "sklearn"},
)
def challenger_models(
    context: dg.AssetExecutionContext,
    training_set: TrainingSetInfo,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[ChallengerRound]:
    """One challenger per family, fit on the set `training_set` built: an MLflow run and a new
    version of `feedback_model` each."""
    settings = run_context.settings()
    full = run_context.full_retrain
    families = settings.full_retrain.families if full else settings.models.families
    tags = {"dagster_run_id": context.run.run_id, "trigger": run_context.trigger(context)}
    registry = mlflow_registry.get_registry()
    try:  # before minutes of training: an unreachable registry fails the step now
        registry.alias_version(CHAMPION)
    except RegistryUnavailable as error:
        raise dg.Failure(description=str(error)) from None
    with warehouse.connect(read_only=True) as con:
        try:
            round_ = train_challengers(
                con, registry, settings, list(families), full, tags, context.log.info, training_set
            )
        except TrainingSetError as error:  # the set was pruned by newer builds
            raise dg.Failure(description=str(error)) from None
    table = [{"version": c.version, "family": c.family, **c.validation} for c in round_.challengers]
    return dg.Output(
        round_,
        metadata={
            "as_of": round_.as_of.isoformat(),
            "training_set_hash": round_.training_set_hash,
            "versions": ", ".join(c.version for c in round_.challengers),
            "validation_metrics": dg.MetadataValue.md(markdown(table)),
        },
    )
