"""Jobs: named selections of assets."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.defs.run_context import run_context_config

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion", "labeling"),
    description="Land new files into raw.* and rebuild labeled.labeled_outcomes.",
)

# The retrain graph: every asset but the backtest (it replays history on its own schedule), the
# analytics and the monitoring (daily, on their own schedules).
RETRAIN_GRAPH = dg.AssetSelection.all() - dg.AssetSelection.groups(
    "backtest", "analytics", "monitoring"
)

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=RETRAIN_GRAPH,
    description="Ingest, label, build the training set, train challengers, evaluate, promote.",
)

full_retrain_job = dg.define_asset_job(
    "full_retrain_job",
    selection=RETRAIN_GRAPH,
    config=run_context_config(full_retrain=True),
    description="Monthly: all families, the wider window, a small hyperparameter search.",
)

backtest_job = dg.define_asset_job(
    "backtest_job",
    selection=dg.AssetSelection.groups("backtest"),
    description="Replay the retraining policy over history against its baselines.",
)

analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=dg.AssetSelection.groups("analytics"),
    description="Weekly feedback stats, the configured A/B comparison and the next serving policy.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.groups("monitoring"),
    description="Feature drift, live performance and serving health, with their WARN checks.",
)

jobs = [ingest_job, retrain_job, full_retrain_job, backtest_job, analytics_job, monitoring_job]
