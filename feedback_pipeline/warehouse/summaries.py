"""Read-only summaries of the warehouse for asset metadata, the CLI and the demo."""

from __future__ import annotations

import duckdb
import pandas as pd

from feedback_pipeline.warehouse.connection import table_exists
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline.warehouse.tables import (
    COUNTED_TABLES,
    INGESTED_FILES,
    LABELED_OUTCOMES,
    RAW_FEEDBACK_EVENTS,
    REJECTED_RECORDS,
)


def markdown(rows: pd.DataFrame | list[dict], max_rows: int = 20) -> str:
    """A markdown table (floats to 4 decimals) for Dagster metadata, MLflow artifacts and the
    CLI; ``(none)`` when there are no rows."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if frame.empty:
        return "(none)"
    return frame.head(max_rows).to_markdown(index=False, floatfmt=".4f")


def table_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    rows = [
        (name, con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])
        for name in COUNTED_TABLES
        if table_exists(con, name)
    ]
    return pd.DataFrame(rows, columns=["table", "rows"])


def rejects_by_reason(con: duckdb.DuckDBPyConnection, kind: str | None = None) -> pd.DataFrame:
    where = "WHERE kind = $kind" if kind else ""
    params = {"kind": kind} if kind else {}
    return con.execute(
        f"""
        SELECT kind, reason, count(*) AS records
        FROM {REJECTED_RECORDS} {where}
        GROUP BY ALL ORDER BY records DESC, kind, reason
        """,
        params,
    ).df()


def file_accounting(con: duckdb.DuckDBPyConnection, kind: str) -> pd.DataFrame:
    """Per file: read = accepted + duplicates + rejected, as stored in the manifest."""
    return con.execute(
        f"""
        SELECT path, status, records_read AS read, accepted, duplicates, rejected, error
        FROM {INGESTED_FILES} WHERE kind = ? ORDER BY path
        """,
        [kind],
    ).df()


def accounting_violations(con: duckdb.DuckDBPyConnection, kind: str) -> pd.DataFrame:
    """Files whose manifest disagrees with itself or with the rows actually stored."""
    spec = KINDS[kind]
    return con.execute(
        f"""
        WITH manifest AS (
            SELECT path, sum(records_read) AS read, sum(accepted) AS accepted,
                   sum(duplicates) AS duplicates, sum(rejected) AS rejected
            FROM {INGESTED_FILES} WHERE kind = $kind GROUP BY path
        ), stored AS (
            SELECT source_file AS path, count(*) AS stored_rows
            FROM {spec.table} GROUP BY source_file
        ), rejected AS (
            SELECT source_file AS path, count(*) AS stored_rejects
            FROM {REJECTED_RECORDS} WHERE kind = $kind GROUP BY source_file
        )
        SELECT m.*, coalesce(s.stored_rows, 0) AS stored_rows,
               coalesce(r.stored_rejects, 0) AS stored_rejects
        FROM manifest m
        LEFT JOIN stored s USING (path) LEFT JOIN rejected r USING (path)
        WHERE m.read <> m.accepted + m.duplicates + m.rejected
           OR m.accepted <> coalesce(s.stored_rows, 0)
           OR m.rejected <> coalesce(r.stored_rejects, 0)
        ORDER BY path
        """,
        {"kind": kind},
    ).df()


def repeated_ids(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Ids stored more than once in a raw table (ingestion should make this 0)."""
    spec = KINDS[kind]
    return con.execute(
        f"SELECT count(*) - count(DISTINCT {spec.id_field}) FROM {spec.table}"
    ).fetchall()[0][0]


def preview(con: duckdb.DuckDBPyConnection, table: str, order_by: str, rows: int = 5) -> str:
    frame = con.execute(f"SELECT * FROM {table} ORDER BY {order_by} LIMIT {int(rows)}").df()
    return markdown(frame)


def labels_by_source_and_environment(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    if not table_exists(con, LABELED_OUTCOMES):
        return pd.DataFrame(columns=["label_source", "environment", "rows", "positive_rate"])
    return con.execute(
        f"""
        SELECT label_source, environment, count(*) AS rows,
               round(avg(label), 3) AS positive_rate, round(avg(strength), 3) AS mean_strength
        FROM {LABELED_OUTCOMES} GROUP BY ALL ORDER BY ALL
        """
    ).df()


def feedback_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        f"""
        SELECT event_type, coalesce(outcome, '') AS outcome, count(*) AS events,
               count(*) FILTER (WHERE environment = 'dev') AS marked_dev
        FROM {RAW_FEEDBACK_EVENTS} GROUP BY ALL ORDER BY ALL
        """
    ).df()
