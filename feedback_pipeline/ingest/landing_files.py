"""Land files from the landing zone into ``raw.*`` tables, exactly once, losing nothing.

This is the driver: it finds the files of a kind, lets in only those that may be read, skips
what the manifest already holds, and hands the rest on in batches. A file lands whole or not
at all. Every record of a file ends up in exactly one of: the kind's raw table (accepted), the
duplicate count (an exact repeat of an id), or ``raw.rejected_records`` (with a reason), and
``raw.ingested_files`` stores ``records_read = accepted + duplicates + rejected``. Lines are
split with numpy and parsed, typed and validated in DuckDB; no Python runs per record.

New files are read, validated and de-duplicated together, in batches of up to
``BATCH_BYTES``, so DuckDB works on large vectors on all cores. A batch is written with one
statement per table, manifest included, in one transaction: a crash leaves whole files or
nothing, and DuckDB writes the rows straight to the database file instead of the log.

Only regular files inside the landing zone are read. A symlink out of the zone, a dangling
symlink, a symlinked directory, a FIFO, a socket or a device is ``refused``: listed in the
manifest with what it is and what to do, and never opened (a FIFO would block the read, a
symlink could carry any file of the machine into the warehouse).

Format readers are in ``readers``, staging, validation and the per-record verdicts in
``validation``, the bookkeeping table ``raw.ingested_files`` in ``manifest``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import duckdb

from feedback_pipeline.ingest.manifest import (
    Admission,
    FileResult,
    Manifest,
    PendingFile,
    manifest_row,
    problem_files,
    refused_file,
    unsupported_result,
    write_manifest,
)
from feedback_pipeline.ingest.readers import file_format, read_and_hash
from feedback_pipeline.ingest.validation import (
    classify_contested,
    count_verdicts,
    drop_staging,
    insert_accepted,
    insert_rejected,
    stage_batch,
    validate_batch,
)
from feedback_pipeline.warehouse.connection import table_exists, transaction
from feedback_pipeline.warehouse.schema import KINDS, KindSpec
from feedback_pipeline.warehouse.tables import INGESTED_FILES

BATCH_BYTES = 256 * 1024 * 1024


def landing_files(landing_dir: Path, kind: str) -> list[Path]:
    """Every entry under ``landing/<kind>/`` but directories and hidden names, sorted so
    ingestion order is stable.

    Symlinks (to directories too), FIFOs, sockets and devices are listed so that ingestion
    refuses them with a reason instead of dropping them silently; symlinked directories are
    never descended into, so discovery cannot wander out of the landing zone.
    """
    folder = landing_dir / kind
    if not folder.is_dir():
        return []
    found: list[Path] = []
    folders = [folder]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif not entry.name.startswith("."):
                    found.append(Path(entry.path))
    return sorted(found)


FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
MOVE_IT_IN = "nothing of it was read: move the file itself into the landing zone"


def _what(mode: int) -> str:
    """What kind of entry a non-regular file mode is, in words."""
    return FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")


class LandingZone:
    """The resolved landing root, and the test every file passes before it is opened: a regular
    file whose real path lies inside the root. Costs one ``lstat`` per file, plus a ``realpath``
    per directory (cached) and per symlink."""

    def __init__(self, landing_dir: Path, kind: str | None = None):
        """``kind``: its folder ``landing/<kind>`` may itself be a link the operator set up
        (to a mounted volume, say); what lies under its target counts as inside too."""
        self.root = os.path.realpath(landing_dir)
        roots = {self.root}
        if kind is not None:
            roots.add(os.path.realpath(landing_dir / kind))
        self._roots = tuple(roots)
        self._prefixes = tuple(root.rstrip(os.sep) + os.sep for root in roots)
        self._folders: dict[str, str] = {}

    def inside(self, real_path: str) -> bool:
        return real_path in self._roots or real_path.startswith(self._prefixes)

    def _real_folder(self, folder: str) -> str:
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        return self._folders[folder]

    def admit(self, path: Path, rel_path: str) -> Admission:
        entry = os.lstat(path)
        if stat.S_ISLNK(entry.st_mode):
            return self._admit_symlink(path, rel_path, entry)
        if not stat.S_ISREG(entry.st_mode):
            what = _what(entry.st_mode)
            return self._refuse(
                entry,
                f"{rel_path} is {what}, not a regular file; nothing of it was read: "
                "put a regular file with the data in the landing zone instead",
                what,
            )
        real_folder = self._real_folder(os.path.dirname(path))
        if not self.inside(real_folder):  # a symlinked folder on the way leads out of the zone
            return self._refuse(
                entry,
                f"{rel_path} lies in {real_folder}, outside the landing zone {self.root} "
                f"(a symlinked folder leads there); {MOVE_IT_IN}",
                os.path.join(real_folder, path.name),
            )
        return Admission(entry)

    def _admit_symlink(self, path: Path, rel_path: str, entry: os.stat_result) -> Admission:
        link = os.readlink(path)
        real = os.path.realpath(path)
        try:
            target = os.stat(path)
        except OSError as error:  # dangling, a loop, or a target we may not look at
            return self._refuse(
                entry,
                f"{rel_path} is a dangling symlink to {link} ({error.strerror}); {MOVE_IT_IN}",
                link,
            )
        if not self.inside(real):
            return self._refuse(
                entry,
                f"{rel_path} is a symlink to {real}, outside the landing zone {self.root}; "
                f"{MOVE_IT_IN}",
                link,
            )
        if stat.S_ISDIR(target.st_mode):
            return self._refuse(
                entry,
                f"{rel_path} is a symlink to the directory {real}, and symlinked directories are "
                "not followed; nothing of it was read: move the files themselves into the "
                "landing zone",
                link,
            )
        if not stat.S_ISREG(target.st_mode):
            return self._refuse(
                entry,
                f"{rel_path} is a symlink to {_what(target.st_mode)} {real}; {MOVE_IT_IN}",
                link,
            )
        return Admission(target)

    @staticmethod
    def _refuse(entry: os.stat_result, reason: str, identity: str) -> Admission:
        digest = hashlib.sha256(f"refused:{identity}".encode()).hexdigest()
        return Admission(entry, reason, digest)


def ingest_batch(
    con: duckdb.DuckDBPyConnection, spec: KindSpec, batch: list[PendingFile]
) -> list[FileResult]:
    """Validate and classify the batch together, then write it in one transaction."""
    # Parsing and judging only read the warehouse, so they run before the transaction.
    staged = stage_batch(con, spec.kind, batch)
    try:
        validate_batch(con, spec, staged)
        classify_contested(con, spec)
        counts = count_verdicts(con)
        results = [
            pending.result
            or FileResult(spec.kind, pending.rel_path, "ingested", *counts.get(index, (0, 0, 0, 0)))
            for index, pending in enumerate(batch)
        ]
        with transaction(con):
            insert_accepted(con, spec, [p.rel_path for p in batch])
            insert_rejected(con, spec)
            write_manifest(con, [manifest_row(r, p) for r, p in zip(results, batch, strict=True)])
        return results
    finally:
        drop_staging(con)


def ingest_files(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    paths: list[Path],
    spec: KindSpec,
    progress: Callable[[str], None] | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> list[FileResult]:
    """Ingest ``paths`` in order; a file seen before (same path and content) is skipped, so
    reruns add nothing. Returns one result per path."""
    results: list[FileResult | None] = [None] * len(paths)
    manifest = Manifest.load(con, spec.kind)
    batch: list[tuple[int, PendingFile]] = []
    batch_size = 0

    def flush() -> None:
        nonlocal batch, batch_size
        if not batch:
            return
        written = ingest_batch(con, spec, [pending for _, pending in batch])
        for (position, _), result in zip(batch, written, strict=True):
            results[position] = result
            if progress:
                progress(
                    f"[{position + 1}/{len(paths)}] {result.path}: {result.status}, read "
                    f"{result.records_read}, accepted {result.accepted}, duplicates "
                    f"{result.duplicates}, rejected {result.rejected}"
                    + (f" ({result.error})" if result.error else "")
                )
        batch, batch_size = [], 0

    zone = LandingZone(landing_dir, spec.kind)
    changed: list[tuple[int, Path, str, os.stat_result]] = []
    for position, path in enumerate(paths):
        rel_path = path.relative_to(landing_dir).as_posix()
        admission = zone.admit(path, rel_path)
        if manifest.unchanged(rel_path, admission):
            results[position] = FileResult(spec.kind, rel_path, "skipped")
        elif admission.refusal is not None:  # listed with its reason, never read
            batch.append((position, refused_file(spec, path, rel_path, admission)))
        else:
            changed.append((position, path, rel_path, admission.stat))

    for (position, path, rel_path, file_stat), (data, content_hash) in zip(
        changed, read_and_hash([path for _, path, _, _ in changed]), strict=True
    ):
        if (rel_path, content_hash) in manifest.hashes:  # touched, but the same content
            results[position] = FileResult(spec.kind, rel_path, "skipped")
            continue
        fmt = file_format(path)
        pending = PendingFile(path, rel_path, data, content_hash, fmt, file_stat.st_mtime_ns)
        if fmt is None:
            pending.result = unsupported_result(spec, path, rel_path)
        batch.append((position, pending))
        batch_size += len(data)
        if batch_size >= batch_bytes:
            flush()
    flush()
    return [r for r in results if r is not None]


def ingest_file(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, path: Path, spec: KindSpec
) -> FileResult:
    """Ingest one landing file in one transaction (skipped if seen before)."""
    return ingest_files(con, landing_dir, [path], spec)[0]


def ingest_kind(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    kind: str,
    progress: Callable[[str], None] | None = None,
) -> list[FileResult]:
    """Ingest every new file of one kind; returns one result per file (skipped ones included)."""
    return ingest_files(con, landing_dir, landing_files(landing_dir, kind), KINDS[kind], progress)


def unseen_files(con: duckdb.DuckDBPyConnection, landing_dir: Path) -> int:
    """How many landing files (every kind) the manifest has not listed with their size and
    mtime, or refused for the same reason: what an ingest would open. Opens no file; on a
    warehouse with no manifest yet, every file counts."""
    if not table_exists(con, INGESTED_FILES):
        return sum(len(landing_files(landing_dir, kind)) for kind in KINDS)
    unseen = 0
    for kind in KINDS:
        manifest, zone = Manifest.load(con, kind), LandingZone(landing_dir, kind)
        for path in landing_files(landing_dir, kind):
            rel_path = path.relative_to(landing_dir).as_posix()
            unseen += not manifest.unchanged(rel_path, zone.admit(path, rel_path))
    return unseen


def landing_zone_problems(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, kind: str
) -> list[str]:
    """What a person should look at before trusting this kind's raw table: a missing or empty
    landing folder (a mistyped data dir), files that could not be read, have no known format
    or were refused. Only a path's latest manifest entry counts, so replacing a broken file
    with a good one clears its warning. Empty when all is well."""
    folder = landing_dir / kind
    if not folder.is_dir():
        return [
            f"landing folder {folder} does not exist: is FEEDBACK_PIPELINE_DATA_DIR right? "
            "Files land in <data dir>/landing/{predictions,feedback,baseline}/"
        ]
    problems = []
    if not landing_files(landing_dir, kind):
        problems.append(f"no landing files in {folder}")
    problems.extend(
        f"{path}: {status} ({error})" for path, status, error in problem_files(con, kind)
    )
    return problems
