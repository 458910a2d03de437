"""The warehouse waits, boundedly, for another process's lock on the DuckDB file."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from feedback_pipeline import warehouse

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
