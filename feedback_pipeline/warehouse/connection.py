"""The DuckDB warehouse: one file, schemas ``raw``, ``labeled``, ``training``, ``ops``.

Timestamps are stored as naive ``TIMESTAMP`` in UTC; features as
validated, minified JSON objects (name -> number or null) that set-based SQL reaches with
``json_extract(features, [...])`` or a STRUCT cast (a MAP column costs 3x the ingest time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from feedback_pipeline.ingest.contract import KINDS, raw_table_columns, raw_table_ddl
from feedback_pipeline.warehouse.tables import (
    INGESTED_FILES,
    REJECTED_RECORDS,
    RETRAINING_EVENTS,
    SCHEMAS,
)

# The raw tables' DDL is generated from the data contract; these are the pipeline's own.
DDL = f"""
CREATE TABLE IF NOT EXISTS {INGESTED_FILES} (
    kind VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    file_format VARCHAR,
    size_bytes BIGINT NOT NULL,
    status VARCHAR NOT NULL,          -- ingested | unreadable | unsupported | refused
    error VARCHAR,
    records_read BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    ingested_at TIMESTAMP NOT NULL,
    PRIMARY KEY (path, content_hash)
);
CREATE TABLE IF NOT EXISTS {REJECTED_RECORDS} (
    kind VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    line_number BIGINT,
    raw_text VARCHAR,
    reason VARCHAR NOT NULL,          -- a stable category, good for GROUP BY
    detail VARCHAR,                   -- the specifics (which id, which earlier line or file)
    rejected_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS {RETRAINING_EVENTS} (
    event_id VARCHAR PRIMARY KEY,
    recorded_at TIMESTAMP NOT NULL,
    action VARCHAR NOT NULL,  -- retrain | rollback | forced_promotion | failed_retrain | repair
    trigger VARCHAR,
    as_of TIMESTAMP,
    old_version VARCHAR,              -- champion before
    new_version VARCHAR,              -- champion after (= old_version when nothing moved)
    challenger_version VARCHAR,
    promoted BOOLEAN NOT NULL,
    mode VARCHAR,
    reason VARCHAR NOT NULL,
    metrics JSON,
    deltas JSON,
    dagster_run_id VARCHAR
);
"""


def _open(path: Path, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writing process; wait (bounded) while another process holds the file,
    e.g. a sensor's short read-only look while a run starts to write."""
    deadline = time.monotonic() + lock_timeout
    delay = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def connect(
    path: str | Path, read_only: bool = False, lock_timeout: float = 120.0
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating schemas and raw tables unless read-only), in UTC."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only, lock_timeout)
    con.execute("SET TimeZone = 'UTC'")
    # Checkpoint in larger steps: per-file commits then cost a WAL append, not a checkpoint.
    con.execute("SET checkpoint_threshold = '256MB'")
    if not read_only:
        for schema in SCHEMAS:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        con.execute(DDL)
        for spec in KINDS.values():
            con.execute(raw_table_ddl(spec))
        # Added after the first release: lets reruns skip unchanged files without reading them.
        con.execute(f"ALTER TABLE {INGESTED_FILES} ADD COLUMN IF NOT EXISTS mtime_ns BIGINT")
        # Added later: which registered model a ledger row is about (NULL: the live one).
        con.execute(f"ALTER TABLE {RETRAINING_EVENTS} ADD COLUMN IF NOT EXISTS model_name VARCHAR")
        # Fields added to the contract later (variant, rating) reach older warehouses too.
        for spec in KINDS.values():
            for name, sql_type in raw_table_columns(spec):
                con.execute(f"ALTER TABLE {spec.table} ADD COLUMN IF NOT EXISTS {name} {sql_type}")
        # Dropped after the first release: a record's content hash is computed from its typed
        # values when a repeated id needs it, instead of being written for every record.
        for spec in KINDS.values():
            con.execute(f"ALTER TABLE {spec.table} DROP COLUMN IF EXISTS record_hash")
    return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All-or-nothing: commit on success, roll back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, qualified_name: str) -> bool:
    schema, name = qualified_name.split(".")
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchall()[0]
    return bool(row and row[0])
