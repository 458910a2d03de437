"""``ops.retraining_events``: the promotion ledger. Every decision is appended, never updated."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import duckdb
import pandas as pd

from feedback_pipeline.registry.model_registry import MODEL_NAME as LIVE_MODEL
from feedback_pipeline.warehouse.tables import RETRAINING_EVENTS as LEDGER

COLUMNS = (
    "event_id, recorded_at, action, trigger, as_of, old_version, new_version, "
    "challenger_version, promoted, mode, reason, metrics, deltas, dagster_run_id, model_name"
)
PLACEHOLDERS = ", ".join(["?"] * len(COLUMNS.split(",")))
# The rows that record who the champion is after them (a retrain, kept or promoted, and every
# move); a failed run's or a policy's row says nothing about the alias.
CHAMPION_ACTIONS = ("retrain", "repair", "rollback", "forced_promotion")


def append_event(
    con: duckdb.DuckDBPyConnection,
    action: str,
    reason: str,
    promoted: bool,
    old_version: str | None,
    new_version: str | None,
    trigger: str | None = None,
    as_of: datetime | None = None,
    challenger_version: str | None = None,
    mode: str | None = None,
    metrics: dict | None = None,
    deltas: dict | None = None,
    dagster_run_id: str | None = None,
    model_name: str | None = None,
) -> str:
    """One ledger row; ``model_name`` None means the live registered model."""
    event_id = str(uuid.uuid4())
    con.execute(
        f"INSERT INTO {LEDGER} ({COLUMNS}) VALUES ({PLACEHOLDERS})",
        [
            event_id,
            datetime.now(UTC).replace(tzinfo=None),
            action,
            trigger,
            as_of,
            old_version,
            new_version,
            challenger_version,
            promoted,
            mode,
            reason,
            json.dumps(metrics, default=float) if metrics is not None else None,
            json.dumps(deltas, default=float) if deltas is not None else None,
            dagster_run_id,
            model_name if model_name != LIVE_MODEL else None,
        ],
    )
    return event_id


def last_champion(con: duckdb.DuckDBPyConnection, model_name: str = LIVE_MODEL) -> str | None:
    """The champion the ledger last recorded for ``model_name`` (None: none, or no champion)."""
    rows = con.execute(
        f"""SELECT new_version FROM {LEDGER}
            WHERE list_contains($moves, action)
              AND coalesce(model_name, $live) = $name
            ORDER BY recorded_at DESC LIMIT 1""",
        {"live": LIVE_MODEL, "name": model_name, "moves": list(CHAMPION_ACTIONS)},
    ).fetchall()
    return rows[0][0] if rows else None


def recent_events(con: duckdb.DuckDBPyConnection, limit: int = 10) -> pd.DataFrame:
    return con.execute(
        f"""
        SELECT strftime(recorded_at, '%Y-%m-%d %H:%M:%S') AS recorded_at, action, trigger,
               coalesce(old_version, '-') AS old_version, coalesce(new_version, '-') AS new_version,
               challenger_version, promoted, mode, reason
        FROM {LEDGER} ORDER BY recorded_at DESC LIMIT {int(limit)}
        """
    ).df()


def previous_champion(
    con: duckdb.DuckDBPyConnection, current: str | None, model_name: str = LIVE_MODEL
) -> str | None:
    """The champion before ``current``, from the newest ledger row that moved to it."""
    rows = con.execute(
        f"""SELECT old_version FROM {LEDGER}
            WHERE new_version = $current AND old_version IS NOT NULL
              AND old_version <> new_version AND coalesce(model_name, $live) = $name
            ORDER BY recorded_at DESC LIMIT 1""",
        {"current": current, "live": LIVE_MODEL, "name": model_name},
    ).fetchall()
    return rows[0][0] if rows else None
