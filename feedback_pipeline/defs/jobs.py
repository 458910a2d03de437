"""Jobs: named selections of assets."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.defs.run_context import run_context_config

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion", "labeling"),
    description="Land new files into raw.* and rebuild labeled.labeled_outcomes.",
)

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.all(),
    description="Ingest, label, build the training set, train challengers, evaluate, promote.",
)

full_retrain_job = dg.define_asset_job(
    "full_retrain_job",
    selection=dg.AssetSelection.all(),
    config=run_context_config(full_retrain=True),
    description="Monthly: all families, the wider window, a small hyperparameter search.",
)

jobs = [ingest_job, retrain_job, full_retrain_job]
