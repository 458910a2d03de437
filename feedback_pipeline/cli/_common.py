"""What several commands share: the warehouse opened for a person, JSON output, durations."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import duckdb

from feedback_pipeline.promotion.status import LOCK_TIMEOUT_SECONDS
from feedback_pipeline.warehouse import connection as warehouse

__all__ = ["LOCK_TIMEOUT_SECONDS", "duration", "open_warehouse", "print_json"]


def open_warehouse(data_dir: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """DATA/warehouse.duckdb, waiting at most ``LOCK_TIMEOUT_SECONDS`` for another's lock."""
    path = data_dir / "warehouse.duckdb"
    if not path.exists():
        raise ValueError(f"no warehouse at {path} yet: run `make demo` or the ingest_job first")
    return warehouse.connect(path, read_only=read_only, lock_timeout=LOCK_TIMEOUT_SECONDS)


def print_json(payload: dict | list) -> None:
    print(json.dumps(payload, default=str, allow_nan=False))


def duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m`` -> a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number and d, h or m, e.g. 7d"
        ) from None
