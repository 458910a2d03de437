"""A small simulated stream, ingested into a real warehouse, for the analytics tests."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

from feedback_pipeline.simulator.feedback_stream import SimulationConfig
from feedback_pipeline_tests.conftest import simulate_and_ingest

START, DAYS = date(2026, 3, 2), 28


def simulated_stream(data_dir: Path, **config) -> datetime:
    """Four weeks of predictions and feedback in ``data_dir``; returns the as-of just after."""
    simulate_and_ingest(
        data_dir,
        SimulationConfig(start=START, days=DAYS, predictions_per_day=200, seed=21, **config),
        ("predictions", "feedback"),
    ).close()
    return datetime.combine(START, datetime.min.time()) + timedelta(days=DAYS + 1)
