"""A small simulated stream, ingested into a real warehouse, for the analytics tests."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline.warehouse import connection as warehouse

START, DAYS = date(2026, 3, 2), 28


def simulated_stream(data_dir: Path, **config) -> datetime:
    """Four weeks of predictions and feedback in ``data_dir``; returns the as-of just after."""
    simulate(
        data_dir / "landing",
        SimulationConfig(start=START, days=DAYS, predictions_per_day=200, seed=21, **config),
    )
    con = warehouse.connect(data_dir / "warehouse.duckdb")
    for kind in ("predictions", "feedback"):
        ingest_kind(con, data_dir / "landing", kind)
    con.close()
    return datetime.combine(START, datetime.min.time()) + timedelta(days=DAYS + 1)
