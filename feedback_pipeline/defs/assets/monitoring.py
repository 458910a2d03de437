"""Monitoring: feature drift, live performance and serving health, each
with a WARN check the UI shows when it is out of bounds."""

from datetime import timedelta

import dagster as dg

from feedback_pipeline.defs.metadata import png_markdown
from feedback_pipeline.defs.resources import (
    MlflowRegistryResource,
    ServingLogResource,
    WarehouseResource,
)
from feedback_pipeline.defs.run_context import WAREHOUSE_POOL, RunContextResource
from feedback_pipeline.monitoring import drift as drift_logic
from feedback_pipeline.monitoring import live
from feedback_pipeline.monitoring.plots import latency_png, live_accuracy_png, psi_png
from feedback_pipeline.registry.model_registry import RegistryUnavailable
from feedback_pipeline.warehouse.summaries import markdown

MONITORING = "monitoring"
WARN = dg.AssetCheckSeverity.WARN


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name=MONITORING,
    kinds={"duckdb"},
    deps=["raw_predictions", "champion_model"],
    check_specs=[dg.AssetCheckSpec("no_drift_over_threshold", asset="feature_drift")],
)
def feature_drift(
    warehouse: WarehouseResource,
    run_context: RunContextResource,
    mlflow_registry: MlflowRegistryResource,
) -> dg.MaterializeResult:
    """PSI and KS per feature, and of the served confidence and decision: the last
    monitoring.recent_days of predictions against the champion's reference period."""
    settings = run_context.settings().monitoring
    as_of = run_context.as_of_datetime()
    try:
        reference = drift_logic.champion_reference(mlflow_registry.get_registry(), settings)
    except (drift_logic.NoChampion, RegistryUnavailable) as error:
        raise dg.Failure(description=str(error)) from None
    since = as_of - timedelta(days=settings.recent_days)
    with warehouse.connect(read_only=True) as con:
        base = drift_logic.load_served(con, reference.features, reference.start, reference.end)
        recent = drift_logic.load_served(con, reference.features, since, as_of)
    table = drift_logic.drift_table(
        base, recent, [*reference.features, *drift_logic.SERVED_COLUMNS], settings
    )
    drifted = table.loc[table["drifted"], "column"].tolist()
    return dg.MaterializeResult(
        metadata={
            "champion_version": reference.champion_version,
            "reference_period": reference.period,
            "recent_period": f"{since:%Y-%m-%d %H:%M} .. {as_of:%Y-%m-%d %H:%M}",
            "drifted": ", ".join(drifted) or "none",
            "drift": dg.MetadataValue.md(markdown(table, max_rows=60)),
            "psi_plot": png_markdown(psi_png(table, settings.psi_threshold), "PSI per column"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_drift_over_threshold",
                passed=not drifted,
                severity=WARN,
                description=(
                    f"PSI > {settings.psi_threshold}: {', '.join(drifted)}"
                    if drifted
                    else f"every PSI <= {settings.psi_threshold}"
                ),
                metadata={"max_psi": float(table["psi"].max()) if len(table) else 0.0},
            )
        ],
    )


@dg.asset(
    pool=WAREHOUSE_POOL,
    group_name=MONITORING,
    kinds={"duckdb"},
    deps=["labeled_outcomes"],
)
def live_performance(
    warehouse: WarehouseResource, run_context: RunContextResource
) -> dg.MaterializeResult:
    """Matured labels of recent predictions per week and the model version that served them:
    accuracy, FP rate and calibration error of what was served."""
    settings = run_context.settings().monitoring
    with warehouse.connect(read_only=True) as con:
        table = live.live_performance(
            con, run_context.as_of_datetime(), settings.reference_days + settings.recent_days
        )
    metadata = {"labeled": int(table["labeled"].sum()) if len(table) else 0}
    metadata["performance"] = dg.MetadataValue.md(markdown(table, max_rows=60))
    if len(table):
        metadata["accuracy_plot"] = png_markdown(live_accuracy_png(table), "live accuracy")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=MONITORING,
    check_specs=[
        dg.AssetCheckSpec("mean_latency_within_sla", asset="serving_health"),
        dg.AssetCheckSpec("fallback_rate_within_sla", asset="serving_health"),
    ],
)
def serving_health(
    serving_log: ServingLogResource, run_context: RunContextResource
) -> dg.MaterializeResult:
    """What `feedback-pipeline serve` logged: latency p50 / p99, fallback rate and errors per
    day, against the SLA (monitoring.sla_mean_latency_ms, sla_fallback_rate)."""
    settings = run_context.settings().monitoring
    health = live.serving_health(
        serving_log.root, run_context.as_of_datetime(), settings.recent_days
    )
    served = health.requests > 0
    latency_ok = not served or health.mean_latency_ms <= settings.sla_mean_latency_ms
    fallback_ok = not served or health.fallback_rate <= settings.sla_fallback_rate
    metadata = {
        "requests": health.requests,
        "log_dir": str(serving_log.root),
        "daily": dg.MetadataValue.md(markdown(health.daily, max_rows=60)),
    }
    if served:
        metadata["latency_plot"] = png_markdown(
            latency_png(health.daily, settings.sla_mean_latency_ms), "latency"
        )
    none = "no requests logged in the window"
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="mean_latency_within_sla",
                passed=latency_ok,
                severity=WARN,
                description=f"mean {health.mean_latency_ms:.1f} ms, p99 "
                f"{health.p99_latency_ms:.1f} ms (SLA: mean <= {settings.sla_mean_latency_ms:g} ms)"
                if served
                else none,
            ),
            dg.AssetCheckResult(
                check_name="fallback_rate_within_sla",
                passed=fallback_ok,
                severity=WARN,
                description=f"fallback rate {health.fallback_rate:.1%} (SLA: <= "
                f"{settings.sla_fallback_rate:.0%}); error rate {health.error_rate:.1%}"
                if served
                else none,
            ),
        ],
    )
