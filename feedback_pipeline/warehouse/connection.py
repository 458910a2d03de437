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

from feedback_pipeline.warehouse.schema import ensure_tables


def is_lock_error(error: BaseException) -> bool:
    """Another process holds the file's write lock (DuckDB says so in an IOException, the
    same class it uses for a file that is not a database or not readable)."""
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


def _open(path: Path, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writing process; wait (bounded) while another process holds the file,
    e.g. a sensor's short read-only look while a run starts to write."""
    deadline = time.monotonic() + lock_timeout
    delay = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if not is_lock_error(error) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def connect(
    path: str | Path, read_only: bool = False, lock_timeout: float = 120.0
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating or upgrading every table unless read-only), in UTC."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only, lock_timeout)
    con.execute("SET TimeZone = 'UTC'")
    # Checkpoint in larger steps: per-file commits then cost a WAL append, not a checkpoint.
    con.execute("SET checkpoint_threshold = '256MB'")
    if not read_only:
        ensure_tables(con)
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
