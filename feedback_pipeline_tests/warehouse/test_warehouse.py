"""The warehouse: bounded waits for another process's lock, and upgrades of older files."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline_tests.conftest import prediction

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(path, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_writer_waits_for_another_process_to_let_go(tmp_path):
    path = tmp_path / "w.duckdb"
    warehouse.connect(path).close()
    holder = hold_lock(path, 1.5)
    started = time.monotonic()
    con = warehouse.connect(path, lock_timeout=30)
    waited = time.monotonic() - started
    con.close()
    holder.wait(timeout=30)
    assert waited > 0.5


def test_no_wait_means_a_clear_lock_error(tmp_path):
    path = tmp_path / "w.duckdb"
    warehouse.connect(path).close()
    holder = hold_lock(path, 5)
    try:
        with pytest.raises(duckdb.IOException, match="(?i)lock"):
            warehouse.connect(path, read_only=True, lock_timeout=0)
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_warehouse_from_the_first_release_is_upgraded_and_still_deduplicates(
    data_dir, landing, write_landing
):
    """The first release stored a record_hash per row; records ingested then are still
    recognised as duplicates (same content) or conflicts (other content) after the upgrade."""
    write_landing("predictions", "old.jsonl", [prediction("a"), prediction("b")])
    path = data_dir / "warehouse.duckdb"
    with warehouse.connect(path) as con:
        ingest_kind(con, landing, "predictions")
        con.execute("ALTER TABLE raw.predictions ADD COLUMN record_hash VARCHAR DEFAULT 'x'")
        con.execute("ALTER TABLE raw.ingested_files DROP COLUMN mtime_ns")
        con.execute("ALTER TABLE raw.predictions DROP COLUMN variant")  # added to the contract
        con.execute("ALTER TABLE raw.feedback_events DROP COLUMN rating")  # later
    write_landing(
        "predictions",
        "new.jsonl",
        [prediction("a"), prediction("b", confidence=0.9), prediction("c", variant="B")],
    )

    with warehouse.connect(path) as con:
        columns = {
            name
            for (name,) in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'predictions'"
            ).fetchall()
        }
        results = {r.path: r for r in ingest_kind(con, landing, "predictions")}
        reasons = con.execute("SELECT reason FROM raw.rejected_records").fetchall()
        variants = con.execute("SELECT prediction_id, variant FROM raw.predictions ORDER BY 1")
        variants = variants.fetchall()

    assert "record_hash" not in columns and set(KINDS["predictions"].columns) <= columns
    old, new = results["predictions/old.jsonl"], results["predictions/new.jsonl"]
    assert old.status == "skipped"  # no mtime was stored, but the content hash matches
    assert (new.accepted, new.duplicates, new.rejected) == (1, 1, 1)
    assert variants == [("a", None), ("b", None), ("c", "B")]
    assert reasons == [("conflicting duplicate: prediction_id already ingested, other content",)]
