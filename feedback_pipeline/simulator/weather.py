"""The NOAA weather stream (Elwell and Polikar 2011) as landing files: a real drifting stream.

One prediction per day with that day's 8 measurements, and its outcome the next day: ``win``
when it rained (label 1), ``loss`` when not, so the pipeline learns the chance of rain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

WEATHER_CSV = Path(__file__).with_name("data") / "weather.csv"
WEATHER_SHA256 = "3c38f05bdc5c4cb115f122414c66976e3662c875d96d7199d9e47fc46aff150e"
FIRST_DAY = date(1949, 1, 1)


@dataclass(frozen=True)
class WeatherSummary:
    predictions: int
    outcomes: int
    first_day: date
    last_day: date
    files: int


def load_weather(path: Path = WEATHER_CSV) -> pd.DataFrame:
    """The stream as shipped, after checking it is the file the backtests were measured on."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEATHER_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} is not the expected {WEATHER_SHA256}; restore the file "
            "from git (or from scikit-multiflow 0.4.1's sdist, see data/README.md)"
        )
    return pd.read_csv(path)


def write_weather_landing(
    landing_dir: Path, start: date = FIRST_DAY, limit_days: int | None = None
) -> WeatherSummary:
    """Write predictions and next-day outcomes as JSON lines, one file per year and kind."""
    frame = load_weather()
    if limit_days is not None:
        frame = frame.head(limit_days)
    features = [c for c in frame.columns if c != "target"]
    days = pd.Timestamp(start) + pd.to_timedelta(np.arange(len(frame)), unit="D")
    ids = pd.Series(np.arange(len(frame))).map("w{:05d}".format)
    predictions = pd.DataFrame(
        {
            "prediction_id": ids,
            "predicted_at": days.strftime("%Y-%m-%dT00:00:00Z"),
            "confidence": 0.5,
            "features": frame[features].astype("float64").to_dict(orient="records"),
            "entity_id": "offutt",
            "environment": "prod",
        }
    )
    outcomes = pd.DataFrame(
        {
            "event_id": ids + "-o",
            "prediction_id": ids,
            "event_type": "outcome",
            "occurred_at": (days + pd.Timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z"),
            "outcome": np.where(frame["target"].to_numpy() == 1, "win", "loss"),
        }
    )
    files = 0
    for kind, table in (("predictions", predictions), ("feedback", outcomes)):
        folder = landing_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        for year, rows in table.groupby(days.year):
            rows.to_json(folder / f"weather_{year}.jsonl", orient="records", lines=True)
            files += 1
    last = start + timedelta(days=len(frame) - 1)
    return WeatherSummary(len(predictions), len(outcomes), start, last, files)
