"""Stages 3-6: blended training set -> challengers (MLflow) -> evaluation report -> champion."""

from typing import Any

import dagster as dg
from pydantic import Field

from feedback_pipeline import reporting, retraining
from feedback_pipeline.assets.common import WAREHOUSE_POOL, PointInTimeConfig, trigger_of
from feedback_pipeline.resources import (
    MlflowRegistryResource,
    SettingsResource,
    WarehouseResource,
)
from feedback_pipeline.training_set import build_training_set, discover_features


class TrainingSetConfig(PointInTimeConfig):
    full: bool = Field(default=False, description="monthly full retrain: the wider window")


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="training",
    kinds={"duckdb"},
    deps=["labeled_outcomes", "baseline_examples"],
)
def training_set(
    context: dg.AssetExecutionContext,
    config: TrainingSetConfig,
    warehouse: WarehouseResource,
    settings: SettingsResource,
) -> dg.MaterializeResult:
    """Feedback rows weighted above weak baseline labels, time-split: `training.training_set`."""
    run_settings = settings.load(config.settings_overrides)
    training = run_settings.training
    if config.full:
        training = training.model_copy(
            update={"lookback_days": run_settings.full_retrain.lookback_days}
        )
    as_of = config.as_of_datetime()
    with warehouse.connect() as con:
        features = discover_features(con, run_settings.features)
        summary = build_training_set(con, training, features, as_of)
    context.log.info(f"training set as of {as_of}: {summary.rows} rows, {len(features)} features")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(summary.rows),
            "as_of": as_of.isoformat(),
            "window_start": summary.window_start.isoformat(),
            "content_hash": summary.content_hash,
            "data_watermark": str(summary.data_watermark),
            "features": ", ".join(features),
            "outcome_weight": training.outcome_weight,
            "rows_by_split_and_source": dg.MetadataValue.md(reporting.markdown(summary.counts)),
        }
    )


class ChallengerConfig(dg.Config):
    families: list[str] | None = Field(
        default=None, description="model families; default: models.families from settings"
    )
    full: bool = Field(
        default=False, description="monthly full retrain: all families and a hyperparameter search"
    )
    settings_overrides: dict[str, Any] = Field(default_factory=dict)


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="training",
    kinds={"mlflow", "xgboost", "sklearn"},
    deps=[training_set],
)
def challenger_models(
    context: dg.AssetExecutionContext,
    config: ChallengerConfig,
    warehouse: WarehouseResource,
    settings: SettingsResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[list[dict[str, Any]]]:
    """One challenger per family: an MLflow run and a new version of `feedback_model`."""
    overrides = config.settings_overrides
    if config.families:  # validated like any other setting, so a typo names the field
        overrides = {
            **overrides,
            "models": {**overrides.get("models", {}), "families": config.families},
        }
    run_settings = settings.load(overrides)
    default_families = (
        run_settings.full_retrain.families if config.full else run_settings.models.families
    )
    tags = {"dagster_run_id": context.run_id, "trigger": trigger_of(context)}
    with warehouse.connect(read_only=True) as con:
        challengers = retraining.train_challengers(
            con,
            mlflow_registry.get_registry(),
            run_settings,
            list(config.families or default_families),
            config.full,
            tags,
            context.log.info,
        )
    table = [
        {"version": c["version"], "family": c["family"], **c["validation"]} for c in challengers
    ]
    return dg.Output(
        challengers,
        metadata={
            "versions": ", ".join(c["version"] for c in challengers),
            "validation_metrics": dg.MetadataValue.md(reporting.markdown(table)),
        },
    )


class EvaluationConfig(dg.Config):
    settings_overrides: dict[str, Any] = Field(
        default_factory=dict, description="e.g. {gate: {mode: dry_run}}"
    )


@dg.asset(pool=WAREHOUSE_POOL, group_name="evaluation", kinds={"mlflow"})
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    challenger_models: list[dict[str, Any]],
    warehouse: WarehouseResource,
    settings: SettingsResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.Output[dict[str, Any]]:
    """Challengers and the champion on the same holdout, with the gate's decision."""
    run_settings = settings.load(config.settings_overrides)
    with warehouse.connect(read_only=True) as con:
        report = retraining.evaluate(
            con,
            mlflow_registry.get_registry(),
            challenger_models,
            run_settings.gate,
            run_settings.models.seed,
            context.log.info,
        )
    tables = retraining.report_tables(report)
    return dg.Output(
        report,
        metadata={
            "decision": dg.MetadataValue.md(tables["decision"]),
            "holdout_metrics": dg.MetadataValue.md(tables["holdout_metrics"]),
            "deltas": dg.MetadataValue.md(tables["deltas"]),
            "promote": report["decision"]["promote"],
            "best_challenger_version": report["best_version"],
            "champion_version": str(report["champion_version"]),
        },
    )


@dg.asset(pool=WAREHOUSE_POOL, group_name="evaluation", kinds={"mlflow", "duckdb"})
def champion_model(
    context: dg.AssetExecutionContext,
    evaluation_report: dict[str, Any],
    warehouse: WarehouseResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """Applies the decision: moves `champion`/`challenger` aliases, appends to the ledger."""
    with warehouse.connect() as con:
        outcome = retraining.apply_decision(
            con,
            mlflow_registry.get_registry(),
            evaluation_report,
            trigger_of(context),
            context.run_id,
        )
    context.log.info(
        f"champion: {outcome['old_version']} -> {outcome['new_version']} ({outcome['reason']})"
    )
    return dg.MaterializeResult(
        metadata={
            "champion_version": str(outcome["new_version"]),
            "previous_champion_version": str(outcome["old_version"]),
            "promoted": outcome["promoted"],
            "reason": dg.MetadataValue.md(outcome["reason"]),
            "model_uri": "models:/feedback_model@champion",
        }
    )
