"""The manifest of landing files: ``raw.ingested_files``, one row per file version seen.

A row says what became of a file (ingested, unreadable, unsupported or refused), its record
counts (``records_read = accepted + duplicates + rejected``) and what identifies it: path,
content hash, size and mtime. Reruns read it to skip files already seen without opening them,
and the landing-zone health check reads each path's latest row. Here live the row types, the
one-statement write and those two queries.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from feedback_pipeline.ingest.readers import FORMATS, file_format
from feedback_pipeline.warehouse.schema import KindSpec
from feedback_pipeline.warehouse.tables import INGESTED_FILES


@dataclass(frozen=True)
class FileResult:
    kind: str
    path: str
    # ingested | unreadable | unsupported | refused (not read: not a regular file inside the
    # landing zone) | skipped (already in the manifest)
    status: str
    records_read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class PendingFile:
    """A new landing file: its bytes, where it lands in the batch, and what staging found."""

    path: Path
    rel_path: str
    data: bytes
    content_hash: str
    fmt: str | None
    mtime_ns: int | None = None
    result: FileResult | None = None  # set when the file cannot be parsed at all
    size_bytes: int | None = None  # when ``data`` is not the file (a refused file is not read)


@dataclass(frozen=True)
class Admission:
    """May a landing file be read? ``stat`` is what a rerun compares (the target's for a
    symlink that is let in, the entry's own ``lstat`` for a refused one)."""

    stat: os.stat_result
    refusal: str | None = None  # what the entry is and what to do; None: read it
    refusal_hash: str | None = None  # stands in for the content hash, since nothing is read


MANIFEST_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("file_format", pa.string()),
        ("size_bytes", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("records_read", pa.int64()),
        ("accepted", pa.int64()),
        ("duplicates", pa.int64()),
        ("rejected", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)


def write_manifest(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """``raw.ingested_files`` rows (``MANIFEST_SCHEMA`` columns), in one statement: a
    row-by-row insert costs more than the rest of a small file's ingestion."""
    if not rows:
        return
    columns = ", ".join(MANIFEST_SCHEMA.names)
    con.register("manifest_rows", pa.Table.from_pylist(rows, MANIFEST_SCHEMA))
    try:
        con.execute(
            f"INSERT INTO {INGESTED_FILES} ({columns}, ingested_at) "
            f"SELECT {columns}, now()::TIMESTAMP FROM manifest_rows"
        )
    finally:
        con.unregister("manifest_rows")


def manifest_row(result: FileResult, pending: PendingFile) -> dict:
    """One file's manifest row: its result plus what was read."""
    return {
        **result.as_dict(),
        "content_hash": pending.content_hash,
        "file_format": pending.fmt,
        "size_bytes": len(pending.data) if pending.size_bytes is None else pending.size_bytes,
        "mtime_ns": pending.mtime_ns,
    }


@dataclass
class Manifest:
    """What was ingested: by path and content hash, and by path, size and mtime (so a rerun
    skips unchanged files without reading them)."""

    hashes: set[tuple[str, str]]
    stats: set[tuple[str, int, int]]

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, kind: str) -> Manifest:
        rows = con.execute(
            f"SELECT path, content_hash, size_bytes, mtime_ns FROM {INGESTED_FILES} WHERE kind = ?",
            [kind],
        ).fetchall()
        return cls(
            {(path, digest) for path, digest, _, _ in rows},
            {(path, size, mtime) for path, _, size, mtime in rows if mtime is not None},
        )

    def unchanged(self, rel_path: str, admission: Admission) -> bool:
        """Listed before with this size and mtime, or refused before for the same reason (a
        refused file has no content hash to compare)."""
        size, mtime = admission.stat.st_size, admission.stat.st_mtime_ns
        return (rel_path, size, mtime) in self.stats or (
            admission.refusal_hash is not None and (rel_path, admission.refusal_hash) in self.hashes
        )


def unsupported_result(spec: KindSpec, path: Path, rel_path: str) -> FileResult:
    """The result of a file whose name has no known format: listed, never parsed."""
    return FileResult(
        spec.kind,
        rel_path,
        "unsupported",
        error=f"unsupported file extension {''.join(path.suffixes) or '(none)'!r}; "
        f"expected one of {', '.join(FORMATS)}",
    )


def refused_file(spec: KindSpec, path: Path, rel_path: str, admission: Admission) -> PendingFile:
    """A refused file's place in the batch: its manifest row, from its ``lstat`` alone."""
    entry = admission.stat
    pending = PendingFile(
        path, rel_path, b"", admission.refusal_hash or "", file_format(path), entry.st_mtime_ns
    )
    pending.result = FileResult(spec.kind, rel_path, "refused", error=admission.refusal)
    pending.size_bytes = entry.st_size
    return pending


def problem_files(con: duckdb.DuckDBPyConnection, kind: str) -> list[tuple[str, str, str]]:
    """``(path, status, error)`` of each path whose latest manifest row says it was unreadable,
    unsupported or refused, so replacing a broken file with a good one clears it."""
    return con.execute(
        f"""
        SELECT path, status, error FROM (
            SELECT path, status, error FROM {INGESTED_FILES} WHERE kind = ?
            QUALIFY row_number() OVER (PARTITION BY path ORDER BY ingested_at DESC) = 1
        )
        WHERE status IN ('unreadable', 'unsupported', 'refused')
        ORDER BY path
        """,
        [kind],
    ).fetchall()
