"""Jobs: named selections of assets."""

from __future__ import annotations

import dagster as dg

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion", "labeling"),
    description="Land new files into raw.* and rebuild labeled.labeled_outcomes.",
)

jobs = [ingest_job]
