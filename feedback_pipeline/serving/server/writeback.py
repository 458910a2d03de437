"""The write-back of served predictions: every served row landed as a contract prediction
record (so served predictions meet their feedback and the loop closes), one request-log line per
request, and the request logs' retention. Buffered, bounded and written off the request path."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feedback_pipeline.serving.server.config import ServerConfig
from feedback_pipeline.serving.server.metrics import Metrics
from feedback_pipeline.serving.server.records import Served, landing_lines

log = logging.getLogger(__package__)  # one logger for the whole server

# How often the request logs are pruned (and once when the server starts).
PRUNE_SECONDS = 60.0


class WriteBack:
    """Served rows as contract prediction records, and one line per request, buffered and
    written every ``flush_rows`` rows or ``flush_seconds`` and at shutdown. Landing files are
    written under a dot-name (which landing discovery skips) and renamed, so ingestion never
    reads half a file; their name carries the server's environment
    (``served-<environment>-<time>-<pid>-<n>.jsonl``), which ingestion keeps as ``source_file``.

    Bounded: at most ``max_buffered_rows`` served rows (and as many request-log lines) are held,
    counting those being written; while writes fail (a full disk) and the buffer is full, new
    ones are dropped, counted in ``feedback_serving_writeback_dropped_rows_total`` and logged
    once per flush interval; the requests are still answered. A failed flush is retried after
    ``flush_seconds``, not on every request.

    Retention: the request logs are pruned by age and size (``prune_request_logs``). Landing
    ``served-*.jsonl`` files are never deleted here: ingestion owns them, and deleting one not
    yet ingested would lose its rows."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self._lock = threading.Lock()  # guards the buffers and their counts
        self._flushing = threading.Lock()  # one flush at a time, in order
        self._served: list[Served] = []
        self._requests: list[dict] = []
        self._buffered = 0  # rows in _served: the flush trigger
        self._held_rows = 0  # rows in _served and being written: the cap
        self._held_lines = 0  # lines in _requests and being written
        self._dropped_rows = self._dropped_lines = 0  # since the last flush logged them
        self._seq = 0
        self._pruned_at = float("-inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-writeback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, served: Served | None, request: dict) -> None:
        cap = self.config.max_buffered_rows
        with self._lock:
            if served is not None:
                if self._held_rows + len(served) <= cap:
                    self._served.append(served)
                    self._buffered += len(served)
                    self._held_rows += len(served)
                else:
                    self._dropped_rows += len(served)
                    self.metrics.dropped_rows.inc(len(served))
            if self._held_lines < cap:
                self._requests.append(request)
                self._held_lines += 1
            else:
                self._dropped_lines += 1
                self.metrics.dropped_log_lines.inc()
            full = self._buffered >= self.config.flush_rows
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._prune()
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            if not self.flush():
                self._stop.wait(self.config.flush_seconds)  # back off: the disk is no better

    def close(self) -> None:
        """Stop the flusher and write what is left: nothing is lost on a clean shutdown."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def flush(self) -> bool:
        """Write what is buffered; False when a write failed (the rows are kept for the next
        flush, within the cap)."""
        with self._flushing:
            with self._lock:
                served, requests = self._served, self._requests
                self._served, self._requests, self._buffered = [], [], 0
                dropped = self._dropped_rows, self._dropped_lines
                self._dropped_rows = self._dropped_lines = 0
            if any(dropped):
                log.warning(
                    "the write-back buffer was full (%d rows, --max-buffered-rows; are writes "
                    "failing?): dropped %d served rows and %d request-log lines since the last "
                    "flush (answered, not written)",
                    self.config.max_buffered_rows,
                    *dropped,
                )
            rows = sum(len(batch) for batch in served)
            try:
                if served:
                    self._write_records(served)
                    self._release(rows, 0)
                    served, rows = [], 0
                if requests:
                    self._write_requests(requests)
                    self._release(0, len(requests))
                return True
            except OSError:  # a full or unwritable disk: keep the rows and try again
                log.exception("could not write served rows; kept in memory for the next flush")
                self.metrics.errors.labels("write").inc()
                with self._lock:  # back to the front of the buffer, in order
                    self._served[:0] = served
                    self._requests[:0] = requests
                    self._buffered += rows
                return False
            except Exception:  # a bug: retrying would fail the same way forever
                log.exception("could not build the records of %d served rows; dropped", rows)
                self.metrics.errors.labels("write").inc()
                self._release(rows, len(requests))
                return True

    def _release(self, rows: int, lines: int) -> None:
        """Written (or given up): no longer counted against the cap."""
        with self._lock:
            self._held_rows -= rows
            self._held_lines -= lines

    def _prune(self) -> None:
        """Prune the request logs at start and every ``PRUNE_SECONDS``; never raises."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        try:
            prune_request_logs(
                self.config.requests_dir,
                datetime.now(UTC),
                self.config.log_retention_days,
                self.config.log_retention_bytes,
            )
        except Exception:  # retention must never stop the write-back
            log.exception("could not prune the request logs in %s", self.config.requests_dir)

    def _write_records(self, served: list[Served]) -> None:
        """One landing file per flush."""
        text, skipped = landing_lines(served)
        if skipped:
            log.warning(
                "%d served rows had no confidence (no model score and no rule_confidence) or "
                "no feature: not written to the landing zone",
                skipped,
            )
        if not text:
            return
        self._seq += 1
        name = (
            f"served-{self.config.environment}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-"
            f"{os.getpid()}-{self._seq}.jsonl"
        )
        write_atomically(self.config.predictions_dir / name, text)

    def _write_requests(self, requests: list[dict]) -> None:
        """Append to ``serving/requests-<UTC day>.jsonl``, one write per day file."""
        folder = self.config.requests_dir
        folder.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for line in requests:
            by_day.setdefault(line["at"][:10].replace("-", ""), []).append(json.dumps(line))
        for day, lines in by_day.items():
            with open(folder / f"requests-{day}.jsonl", "a", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")


REQUEST_LOG = re.compile(r"requests-(\d{8})\.jsonl")


def prune_request_logs(folder: Path, now: datetime, days: int, max_bytes: int) -> list[Path]:
    """Delete the request logs (``requests-YYYYMMDD.jsonl``) dated more than ``days`` days
    before ``now``'s UTC day, then more, oldest first, while together they hold over
    ``max_bytes``; return the deleted paths. Today's file (and any dated later) is never
    deleted: the server appends to it. Only the server's own request logs: the landing
    ``served-*.jsonl`` files belong to ingestion, which may not have read them yet."""
    if not folder.is_dir():
        return []
    today = now.astimezone(UTC).strftime("%Y%m%d")
    oldest_kept = (now.astimezone(UTC) - timedelta(days=days)).strftime("%Y%m%d")
    logs = sorted(
        (match[1], path)
        for path in folder.iterdir()
        if (match := REQUEST_LOG.fullmatch(path.name)) and path.is_file()
    )
    sizes = {path: path.stat().st_size for _, path in logs}
    total = sum(sizes.values())
    deleted = []
    for day, path in logs:  # oldest first
        if day >= today or (day >= oldest_kept and total <= max_bytes):
            break
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not delete the old request log %s: %s", path, error)
            continue
        total -= sizes[path]
        deleted.append(path)
    if deleted:
        log.info(
            "pruned %d request logs (older than %d days, or over %d bytes in all): %s",
            len(deleted),
            days,
            max_bytes,
            ", ".join(path.name for path in deleted),
        )
    return deleted


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a dot-named temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
