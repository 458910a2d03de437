"""The backtest as an asset: replay the retraining policy with its baselines."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from feedback_pipeline.backtest.replay import (
    EXPERIMENT,
    BacktestPlan,
    backtest_into,
    default_start,
)
from feedback_pipeline.defs.metadata import png_markdown
from feedback_pipeline.defs.resources import MlflowRegistryResource, WarehouseResource
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.settings import SettingsError, parse_as_of
from feedback_pipeline.warehouse.summaries import markdown


class BacktestConfig(dg.Config):
    start: str | None = Field(
        default=None,
        description="first period start (ISO-8601, UTC); default: 4 weeks of "
        "data after the first prediction",
    )
    end: str | None = Field(
        default=None, description="end of the last period; default: the run's as_of"
    )
    every_days: float = Field(default=7.0, gt=0, description="period length in days")


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name="backtest",
    kinds={"duckdb", "mlflow"},
    deps=["raw_predictions", "raw_feedback_events", "baseline_examples"],
)
def backtest_report(
    context: dg.AssetExecutionContext,
    config: BacktestConfig,
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """Prequential accuracy of the policy, no-retrain, retrain-always and refit-everything."""
    source = Path(warehouse.path)
    try:
        end = parse_as_of(config.end) if config.end else run_context.as_of_datetime()
        with warehouse.connect(read_only=True) as con:
            start = parse_as_of(config.start) if config.start else default_start(con)
        plan = BacktestPlan(start, end, timedelta(days=config.every_days))
    except (SettingsError, ValueError) as error:
        raise dg.Failure(description=f"backtest_report config: {error}") from None
    summary_registry = mlflow_registry.get_registry(experiment=EXPERIMENT)
    summary, run_id = backtest_into(
        source.parent / "backtest",
        source,
        None,
        summary_registry,
        run_context.settings(),
        plan,
        context.log.info,
    )
    return dg.MaterializeResult(
        metadata={
            "backtest_id": summary.backtest_id,
            "periods": len(summary.periods["period_start"].unique()),
            "summary": dg.MetadataValue.md(markdown(summary.overall)),
            "policy_vs_baselines": dg.MetadataValue.md(markdown(summary.paired)),
            "accuracy_per_period": png_markdown(summary.plot_path.read_bytes(), "accuracy"),
            "mlflow_run_id": run_id,
        }
    )
