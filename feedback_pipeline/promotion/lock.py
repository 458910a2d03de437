"""The promotion lock: one alias move at a time, with the check that makes it safe.

MLflow's ``set_registered_model_alias`` has no compare-and-set (not in the client, the REST
API or the SQL store): two promoters that each read "champion is v4" and then set it both
succeed, and the last one wins silently. So the compare-and-set happens here, on the
promoters' side: every alias move of this project (the gate's decision, ``promote``,
``rollback``) takes this lock, reads the alias inside it, refuses if it is not what the
decision was judged against, and moves it and writes the ledger before letting go.

The lock is an exclusive ``flock`` on ``<warehouse file>.promotion.lock``, beside the warehouse
that holds the ledger. It holds whatever MLflow is (a sqlite file or a remote tracking server):
what it serializes is the promoters, and every promoter must reach this warehouse anyway to
write the ledger. ``flock`` is released by the kernel when its holder dies, so a ``kill -9``
never leaves it held. It does not reach across machines that do not share the warehouse's
filesystem; a deployment on several machines swaps it for a database advisory lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

DEFAULT_TIMEOUT_SECONDS = 120.0
LOG = logging.getLogger(__name__)


class PromotionLockTimeout(TimeoutError):
    """Another promoter held the lock for longer than we were willing to wait."""


def lock_path(con: duckdb.DuckDBPyConnection) -> Path:
    """``<warehouse file>.promotion.lock``; an in-memory warehouse locks in the temp dir."""
    (path,) = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()[0]
    if not path:
        return Path(os.environ.get("TMPDIR", "/tmp")) / f"feedback_pipeline-{os.getpid()}.lock"
    return Path(path).with_name(Path(path).name + ".promotion.lock")


@contextmanager
def promotion_lock(
    con: duckdb.DuckDBPyConnection, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Iterator[None]:
    """Hold the promotion lock of ``con``'s warehouse; wait at most ``timeout`` seconds."""
    path = lock_path(con)
    with open(path, "a+") as file:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "unknown"
                if not waiting:  # say so once: a promote that waits silently looks hung
                    LOG.warning(
                        "waiting up to %.0f s for the promotion lock %s (held by %s)",
                        timeout,
                        path,
                        holder,
                    )
                    waiting = True
                if time.monotonic() >= deadline:
                    raise PromotionLockTimeout(
                        f"the promotion lock {path} was held for over {timeout:.0f} s (by "
                        f"{holder}): another promotion is running or hung; wait for it, or "
                        "stop that process, then rerun"
                    ) from None
                time.sleep(0.05)
        try:
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()}\n")
            file.flush()
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
