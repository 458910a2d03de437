"""Jobs: named selections of assets."""

from __future__ import annotations

from typing import Any

import dagster as dg

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


def retrain_run_config(as_of: str | None = None, full: bool = False) -> dict[str, Any]:
    """Run config for a retrain as of one point in time (schedules and sensors use it)."""
    point_in_time = {"as_of": as_of} if as_of else {}
    return {
        "ops": {
            "labeled_outcomes": {"config": point_in_time},
            "training_set": {"config": {**point_in_time, "full": full}},
            "challenger_models": {"config": {"full": full}},
        }
    }


full_retrain_job = dg.define_asset_job(
    "full_retrain_job",
    selection=dg.AssetSelection.all(),
    config=retrain_run_config(full=True),
    description="Monthly: all families, the wider window, a small hyperparameter search.",
)

jobs = [ingest_job, retrain_job, full_retrain_job]
