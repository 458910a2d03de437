"""Land files from the landing zone into ``raw.*`` tables, exactly once, losing nothing.

DESIGN section 4. A file lands whole or not at all. Every record of a file ends up in exactly one
of: the kind's raw table (accepted), the duplicate count (an exact repeat of an id), or
``raw.rejected_records`` (with a reason), and ``raw.ingested_files`` stores
``records_read = accepted + duplicates + rejected``. Lines are split with numpy and parsed,
typed and validated in DuckDB; no Python runs per record.

New files are read, validated and de-duplicated together, in batches of up to
``BATCH_BYTES``, so DuckDB works on large vectors on all cores. A batch is written with one
statement per table, manifest included, in one transaction: a crash leaves whole files or
nothing, and DuckDB writes the rows straight to the database file instead of the log.

Only regular files inside the landing zone are read. A symlink out of the zone, a dangling
symlink, a symlinked directory, a FIFO, a socket or a device is ``refused``: listed in the
manifest with what it is and what to do, and never opened (a FIFO would block the read, a
symlink could carry any file of the machine into the warehouse).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from feedback_pipeline.ingest.contract import (
    KINDS,
    KindSpec,
    record_hash_sql,
    sql_string,
    validation_sql,
)
from feedback_pipeline.warehouse.connection import transaction
from feedback_pipeline.warehouse.tables import INGESTED_FILES, REJECTED_RECORDS

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".csv": "csv",
    ".parquet": "parquet",
}
UTF8_BOM = b"\xef\xbb\xbf"
BATCH_BYTES = 256 * 1024 * 1024

LINES_SCHEMA = pa.schema(
    [("file_index", pa.int64()), ("line_no", pa.int64()), ("unterminated", pa.bool_())]
)
DOCS_SCHEMA = pa.schema(
    [
        ("file_index", pa.int64()),
        ("line_no", pa.int64()),
        ("raw_text", pa.large_string()),
        ("doc", pa.large_string()),
        ("parse_error", pa.large_string()),
    ]
)


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


class UnreadableFile(Exception):
    """The file as a whole cannot be read (corrupt parquet, broken gzip header...)."""


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


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


@dataclass(frozen=True)
class Admission:
    """May a landing file be read? ``stat`` is what a rerun compares (the target's for a
    symlink that is let in, the entry's own ``lstat`` for a refused one)."""

    stat: os.stat_result
    refusal: str | None = None  # what the entry is and what to do; None: read it
    refusal_hash: str | None = None  # stands in for the content hash, since nothing is read


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
            what = FILE_TYPES.get(stat.S_IFMT(entry.st_mode), "not a regular file")
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
            what = FILE_TYPES.get(stat.S_IFMT(target.st_mode), "not a regular file")
            return self._refuse(
                entry, f"{rel_path} is a symlink to {what} {real}; {MOVE_IT_IN}", link
            )
        return Admission(target)

    @staticmethod
    def _refuse(entry: os.stat_result, reason: str, identity: str) -> Admission:
        digest = hashlib.sha256(f"refused:{identity}".encode()).hexdigest()
        return Admission(entry, reason, digest)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line_starts(data: bytes, line_ends: np.ndarray) -> np.ndarray:
    """Where each line starts: after a UTF-8 BOM, then after each newline in ``line_ends``;
    a newline that ends the data opens no line."""
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    starts = np.concatenate([[start], line_ends + 1]).astype(np.int64)
    return starts[starts < len(data)]


def _blank(buffer: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Lines holding nothing but their line ending (LF or CRLF): not records."""
    ends = np.append(starts[1:] - 1, len(buffer) - int(len(buffer) > 0 and buffer[-1] == 10))
    lengths = ends - starts
    first_byte = buffer[np.minimum(starts, max(len(buffer) - 1, 0))] if len(buffer) else lengths
    return (lengths == 0) | ((lengths == 1) & (first_byte == 13))


def split_lines(data: bytes, as_text: bool = False) -> pa.Table:
    """``(line_no, line)`` for every line of ``data``, zero-copy, without a per-line loop.

    ``as_text`` (only for data known to be valid UTF-8) yields strings instead of bytes.
    Line numbers count every line; blank lines are left out.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts = _line_starts(data, np.flatnonzero(buffer == 10))
    offsets = np.append(starts, len(data)).astype(np.int64)
    array_type = pa.large_string() if as_text else pa.large_binary()
    lines = pa.Array.from_buffers(
        array_type, len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    table = pa.table({"line_no": np.arange(1, len(starts) + 1, dtype=np.int64), "line": lines})
    blank = _blank(buffer, starts)
    return table.filter(pa.array(~blank)) if blank.any() else table


GZIP_MAGIC = b"\x1f\x8b"
GZIP_CHUNK = 16 * 1024 * 1024  # compressed bytes per call: bounds the copies zlib makes


def gunzip(data: bytes) -> bytes:
    """The whole content of a gzip file, or ``UnreadableFile``: a file lands whole or not at all.

    Every member of a multi-member gzip is read (as ``gzip`` does); a stream that ends before
    its trailer (a truncated file) and bytes after the last member that are neither another
    member nor zero padding are refused, since part of the file would be missing or unknown.
    """
    view = memoryview(data)
    parts: list[bytes] = []
    position = 0
    members = 0
    while position < len(data):
        if members and data[position : position + 2] != GZIP_MAGIC:
            if data.count(0, position) == len(data) - position:
                break  # zero padding after the last member, as gzip allows
            raise UnreadableFile(
                f"{len(data) - position} bytes after the end of the gzip stream (at byte "
                f"{position}) are not gzip: the file is damaged or something was appended to "
                "it; nothing of it was ingested; replace it with a clean file"
            )
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not decompressor.eof and position < len(data):
            chunk = view[position : position + GZIP_CHUNK]
            try:
                parts.append(decompressor.decompress(chunk))
            except zlib.error as error:
                raise UnreadableFile(
                    f"not a readable gzip file: {error} (member {members + 1}, near byte "
                    f"{position}); nothing of it was ingested"
                ) from None
            position += len(chunk) - len(decompressor.unused_data)
        if not decompressor.eof:
            raise UnreadableFile(
                f"gzip stream ended early: the file is truncated ({len(data)} bytes read); "
                "nothing of it was ingested; replace it with the complete file"
            )
        members += 1
    return b"".join(parts)


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


def _with_file_index(table: pa.Table, file_index: int) -> pa.Table:
    column = pa.array(np.full(table.num_rows, file_index, dtype=np.int64))
    return table.add_column(0, "file_index", column)


def _json_lines(data: bytes, file_index: int, as_text: bool) -> pa.Table:
    """A JSON-lines file's records, each marked ``unterminated`` when it is a last line
    without a newline (so a parse failure there reads as a truncated file)."""
    lines = split_lines(data, as_text=as_text)
    unterminated = np.zeros(lines.num_rows, dtype=bool)
    if lines.num_rows and not data.endswith(b"\n"):
        unterminated[-1] = True
    return _with_file_index(lines, file_index).add_column(2, "unterminated", pa.array(unterminated))


def csv_records(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The line number each CSV record starts on, and whether it is blank; the header first.

    A newline ends a record only where the quotes before it are balanced (a quote inside a
    quoted cell is doubled, which keeps the count even), so a cell with line breaks does not
    shift the line numbers of the records after it.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == 10)
    quotes = np.flatnonzero(buffer == 34)
    starts = _line_starts(data, newlines[np.searchsorted(quotes, newlines) % 2 == 0])
    return np.searchsorted(newlines, starts) + 1, _blank(buffer, starts)


def _csv_header(data: bytes) -> list[str]:
    """The column names of the header record; the CSV dialect is fixed, never guessed."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline="")
    try:
        names = next(csv.reader(text), [])
    except csv.Error as error:
        raise UnreadableFile(f"not a readable CSV header: {error}") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not names or "" in names or repeated or any("\ufffd" in n for n in names):
        raise UnreadableFile(
            "the CSV header must name every column once, in UTF-8; got "
            + ", ".join(repr(n) for n in names)
        )
    return names


def _csv_docs(con: duckdb.DuckDBPyConnection, path: Path, data: bytes) -> pa.Table:
    """CSV rows as JSON docs; records the CSV parser refuses come with its reason.

    RFC 4180 with a header: comma-separated, ``"`` quotes, a quote in a quoted cell doubled,
    cells may hold line breaks. Every record carries the line it starts on.
    """
    if not data or data.isspace():
        return DOCS_SCHEMA.remove(0).empty_table()
    columns = ", ".join(f"{sql_string(name)}: 'VARCHAR'" for name in _csv_header(data))
    con.execute("DROP TABLE IF EXISTS csv_reject_errors; DROP TABLE IF EXISTS csv_reject_scans")
    try:
        good = con.sql(
            f"""
            SELECT to_json(t)::VARCHAR AS doc FROM read_csv(?, auto_detect = false,
                header = true, delim = ',', quote = '"', escape = '"', columns = {{{columns}}},
                store_rejects = true, rejects_table = 'csv_reject_errors',
                rejects_scan = 'csv_reject_scans') t
            """,
            params=[str(path)],
        ).to_arrow_table()
    except duckdb.Error as error:
        raise UnreadableFile(f"not a readable CSV file: {error}") from None
    # DuckDB numbers records in file order, the header as 1 and blank lines included.
    bad = con.sql(
        """
        SELECT line AS record, trim(any_value(csv_line), chr(13) || chr(10)) AS raw_text,
               NULL::VARCHAR AS doc,
               'unparseable CSV line: ' || string_agg(error_type || ': ' || error_message, '; ')
                   AS parse_error
        FROM csv_reject_errors GROUP BY line ORDER BY line
        """
    ).to_arrow_table()
    con.execute("DROP TABLE csv_reject_errors; DROP TABLE csv_reject_scans")
    line_numbers, blank = csv_records(data)
    bad_records = bad.column("record").to_numpy()
    data_records = np.arange(2, len(line_numbers) + 1)
    good_records = data_records[~blank[1:] & ~np.isin(data_records, bad_records)]
    if len(good_records) == good.num_rows and bad_records.max(initial=0) <= len(line_numbers):
        good_lines, bad_lines = line_numbers[good_records - 1], line_numbers[bad_records - 1]
    else:  # a stray quote outside a quoted cell: count one record per line, as DuckDB does
        good_lines = np.setdiff1d(
            np.arange(2, 2 + good.num_rows + bad.num_rows), bad_records, assume_unique=True
        )[: good.num_rows]
        bad_lines = bad_records
    docs = good.column("doc")
    good_docs = pa.table(
        {
            "line_no": good_lines.astype(np.int64),
            "raw_text": docs,
            "doc": docs,
            "parse_error": pa.nulls(good.num_rows, pa.large_string()),
        }
    )
    bad_docs = bad.drop_columns(["record"]).add_column(
        0, "line_no", pa.array(bad_lines.astype(np.int64))
    )
    schema = DOCS_SCHEMA.remove(0)
    return pa.concat_tables([good_docs.cast(schema), bad_docs.cast(schema)])


def _parquet_docs(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    try:
        table = con.sql(
            """
            SELECT line_no, doc AS raw_text, doc, NULL::VARCHAR AS parse_error
            FROM (
                SELECT file_row_number + 1 AS line_no, to_json(t)::VARCHAR AS doc
                FROM read_parquet(?, file_row_number = true) t
            )
            """,
            params=[str(path)],
        ).to_arrow_table()
    except duckdb.Error as error:
        raise UnreadableFile(f"not a readable parquet file: {error}") from None
    return table.cast(DOCS_SCHEMA.remove(0))


@dataclass
class Staged:
    """A batch's records, grouped by how they are parsed."""

    text_lines: list[pa.Table]  # JSON lines of valid UTF-8 files
    byte_lines: list[pa.Table]  # JSON lines of files with invalid UTF-8 somewhere
    strict_docs: list[pa.Table]  # parquet rows as JSON
    lenient_docs: list[pa.Table]  # CSV rows as JSON (numbers and booleans written as text)
    files: pa.Table  # file_index, path, content_hash


def stage_batch(con: duckdb.DuckDBPyConnection, kind: str, batch: list[PendingFile]) -> Staged:
    staged = Staged([], [], [], [], pa.table({}))
    for index, pending in enumerate(batch):
        if pending.result is not None:  # refused or unsupported: never opened, not even by path
            continue
        try:
            if pending.fmt in ("jsonl", "jsonl.gz"):
                data = pending.data if pending.fmt == "jsonl" else gunzip(pending.data)
                valid_utf8 = is_utf8(data)  # the common case skips per-line decoding in SQL
                lines = _json_lines(data, index, as_text=valid_utf8)
                (staged.text_lines if valid_utf8 else staged.byte_lines).append(lines)
            elif pending.fmt == "csv":
                docs = _csv_docs(con, pending.path, pending.data)
                staged.lenient_docs.append(_with_file_index(docs, index))
            elif pending.fmt == "parquet":
                staged.strict_docs.append(_with_file_index(_parquet_docs(con, pending.path), index))
        except UnreadableFile as error:
            pending.result = FileResult(kind, pending.rel_path, "unreadable", error=str(error))
    staged.files = pa.table(
        {
            "file_index": np.arange(len(batch), dtype=np.int64),
            "path": [p.rel_path for p in batch],
            "content_hash": [p.content_hash for p in batch],
        }
    )
    return staged


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """One table in small record batches, so DuckDB scans it on all cores."""
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    return pa.Table.from_batches(table.to_batches(max_chunksize=4096), schema=table.schema)


def validate_batch(con: duckdb.DuckDBPyConnection, spec: KindSpec, staged: Staged) -> None:
    """Temp table ``judged``: every record of the batch, typed, with a reason if invalid."""
    text_schema = LINES_SCHEMA.append(pa.field("line", pa.large_string()))
    byte_schema = LINES_SCHEMA.append(pa.field("line", pa.large_binary()))
    con.register("batch_files", staged.files)
    con.register("text_lines", _concat(staged.text_lines, text_schema))
    con.register("byte_lines", _concat(staged.byte_lines, byte_schema))
    con.register("strict_docs", _concat(staged.strict_docs, DOCS_SCHEMA))
    con.register("lenient_docs", _concat(staged.lenient_docs, DOCS_SCHEMA))
    # The JSON parser ignores the trailing CR/LF; raw text is trimmed only for rejected lines.
    con.execute("""
        CREATE OR REPLACE TEMP VIEW strict_view AS
        SELECT file_index, line_no, line AS raw_text, line AS doc, NULL::VARCHAR AS parse_error,
               unterminated
        FROM text_lines
        UNION ALL
        SELECT file_index, line_no, coalesce(text, line::VARCHAR), text,
               CASE WHEN text IS NULL THEN 'invalid UTF-8' END, unterminated
        FROM (SELECT *, TRY(decode(line)) AS text FROM byte_lines)
        UNION ALL
        SELECT file_index, line_no, raw_text, doc, parse_error, false FROM strict_docs;
        CREATE OR REPLACE TEMP VIEW lenient_view AS
        SELECT file_index, line_no, raw_text, doc, parse_error, false AS unterminated
        FROM lenient_docs;
        CREATE OR REPLACE TEMP VIEW staged_text AS
        SELECT file_index, line_no, raw_text FROM strict_view
        UNION ALL SELECT file_index, line_no, raw_text FROM lenient_view;
    """)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE judged AS "
        f"SELECT * FROM ({validation_sql(spec, 'strict_view')}) UNION ALL "
        f"SELECT * FROM ({validation_sql(spec, 'lenient_view', lenient=True)})"
    )


def drop_staging(con: duckdb.DuckDBPyConnection) -> None:
    """Forget the batch's temp tables, views and registered tables."""
    con.execute(
        "DROP VIEW IF EXISTS staged_text; DROP VIEW IF EXISTS strict_view; "
        "DROP VIEW IF EXISTS lenient_view; DROP TABLE IF EXISTS judged; "
        "DROP TABLE IF EXISTS contested"
    )
    for name in ("batch_files", "text_lines", "byte_lines", "strict_docs", "lenient_docs"):
        con.unregister(name)


# A record's position in the batch, as one sortable number: file index, then line.
POSITION = "(file_index * 4294967296 + line_no)"


def _classify_contested(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
    """Temp table ``contested``: the valid records whose id is not simply new, with a verdict.

    An id is contested when it repeats inside the batch or the table already holds it. Its
    first occurrence (earlier files of the batch first) is accepted unless the table holds the
    id; later ones are duplicates when they repeat the stored (or first) content, and conflicts
    otherwise. Every valid record not in ``contested`` is accepted.
    """
    key = spec.id_field
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE contested AS
        WITH firsts AS (
            SELECT {key}, count(*) AS occurrences, min({POSITION}) AS first_position
            FROM judged WHERE reason IS NULL GROUP BY {key}
        ), existing AS (
            SELECT {key}, {record_hash_sql(spec, "x")} AS existing_hash,
                   source_file AS existing_file
            FROM {spec.table} x
            WHERE {key} IN (SELECT {key} FROM firsts)
        ), contested_ids AS (
            SELECT f.*, x.existing_hash, x.existing_file
            FROM firsts f LEFT JOIN existing x USING ({key})
            WHERE f.occurrences > 1 OR x.{key} IS NOT NULL
        ), contested_records AS (
            SELECT j.*, {POSITION} AS position, {record_hash_sql(spec, "j")} AS record_hash
            FROM judged j SEMI JOIN contested_ids USING ({key})
            WHERE j.reason IS NULL
        ), first_hashes AS (
            SELECT {key}, arg_min(record_hash, position) AS first_hash
            FROM contested_records GROUP BY {key}
        )
        SELECT j.file_index, j.line_no, j.{key},
               c.first_position % 4294967296 AS first_line,
               coalesce(c.existing_file, b.path) AS canonical_file,
               CASE
                   WHEN j.position = c.first_position AND c.existing_file IS NULL THEN 'accepted'
                   WHEN j.record_hash = coalesce(c.existing_hash, h.first_hash) THEN 'duplicate'
                   WHEN c.existing_file IS NULL
                        AND c.first_position // 4294967296 = j.file_index THEN 'conflict_in_file'
                   ELSE 'conflict_existing'
               END AS verdict
        FROM contested_records j
        JOIN contested_ids c USING ({key})
        JOIN first_hashes h USING ({key})
        JOIN batch_files b ON b.file_index = c.first_position // 4294967296
    """)


def _count_verdicts(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[int, int, int, int]]:
    """Per file index: read, accepted, duplicates, rejected."""
    rows = con.execute(
        """
        WITH judged_counts AS (
            SELECT file_index, count(*) AS read,
                   count(*) FILTER (WHERE reason IS NOT NULL) AS invalid
            FROM judged GROUP BY file_index
        ), contested_counts AS (
            SELECT file_index,
                   count(*) FILTER (WHERE verdict = 'duplicate') AS duplicates,
                   count(*) FILTER (WHERE verdict LIKE 'conflict%') AS conflicts
            FROM contested GROUP BY file_index
        )
        SELECT j.file_index, j.read,
               j.read - j.invalid - coalesce(c.duplicates, 0) - coalesce(c.conflicts, 0),
               coalesce(c.duplicates, 0), j.invalid + coalesce(c.conflicts, 0)
        FROM judged_counts j LEFT JOIN contested_counts c USING (file_index)
        """
    ).fetchall()
    return {row[0]: tuple(int(v) for v in row[1:]) for row in rows}


def _insert_accepted(con: duckdb.DuckDBPyConnection, spec: KindSpec, paths: list[str]) -> None:
    """Every accepted record of the batch, in one statement."""
    columns = ", ".join(spec.columns)
    con.execute(
        f"""
        INSERT INTO {spec.table} ({columns}, source_file, source_line, ingested_at)
        SELECT {columns}, $paths[file_index + 1], line_no, now()::TIMESTAMP
        FROM judged j
        WHERE j.reason IS NULL AND NOT EXISTS (
            SELECT 1 FROM contested c
            WHERE c.file_index = j.file_index AND c.line_no = j.line_no
              AND c.verdict <> 'accepted'
        )
        """,
        {"paths": paths},
    )


def _insert_rejected(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
    """Invalid records and conflicting duplicates, each with a stable reason and a detail."""
    key = spec.id_field
    con.execute(
        f"""
        INSERT INTO {REJECTED_RECORDS}
        SELECT $kind, b.path, b.content_hash, r.line_no, rtrim(r.raw_text, chr(13) || chr(10)),
               r.reason, r.detail, now()::TIMESTAMP
        FROM (
            SELECT file_index, line_no, raw_text, reason, NULL AS detail
            FROM judged WHERE reason IS NOT NULL
            UNION ALL
            SELECT c.file_index, c.line_no, s.raw_text,
                   CASE verdict
                       WHEN 'conflict_in_file'
                           THEN 'conflicting duplicate: {key} repeated in the file, other content'
                       ELSE 'conflicting duplicate: {key} already ingested, other content'
                   END,
                   CASE verdict
                       WHEN 'conflict_in_file'
                           THEN '{key} ' || c.{key} || ' first appears at line ' || c.first_line
                       ELSE '{key} ' || c.{key} || ' was ingested from ' || c.canonical_file
                   END
            FROM contested c JOIN staged_text s USING (file_index, line_no)
            WHERE c.verdict LIKE 'conflict%'
        ) r JOIN batch_files b USING (file_index)
        ORDER BY r.file_index, r.line_no
        """,
        {"kind": spec.kind},
    )


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


def _unsupported(spec: KindSpec, path: Path, rel_path: str) -> FileResult:
    return FileResult(
        spec.kind,
        rel_path,
        "unsupported",
        error=f"unsupported file extension {''.join(path.suffixes) or '(none)'!r}; "
        f"expected one of {', '.join(FORMATS)}",
    )


def _refused(spec: KindSpec, path: Path, rel_path: str, admission: Admission) -> PendingFile:
    """A refused file's place in the batch: its manifest row, from its ``lstat`` alone."""
    entry = admission.stat
    pending = PendingFile(
        path, rel_path, b"", admission.refusal_hash or "", file_format(path), entry.st_mtime_ns
    )
    pending.result = FileResult(spec.kind, rel_path, "refused", error=admission.refusal)
    pending.size_bytes = entry.st_size
    return pending


def ingest_batch(
    con: duckdb.DuckDBPyConnection, spec: KindSpec, batch: list[PendingFile]
) -> list[FileResult]:
    """Validate and classify the batch together, then write it in one transaction."""
    # Parsing and judging only read the warehouse, so they run before the transaction.
    staged = stage_batch(con, spec.kind, batch)
    try:
        validate_batch(con, spec, staged)
        _classify_contested(con, spec)
        counts = _count_verdicts(con)
        results = [
            pending.result
            or FileResult(spec.kind, pending.rel_path, "ingested", *counts.get(index, (0, 0, 0, 0)))
            for index, pending in enumerate(batch)
        ]
        with transaction(con):
            _insert_accepted(con, spec, [p.rel_path for p in batch])
            _insert_rejected(con, spec)
            write_manifest(con, [manifest_row(r, p) for r, p in zip(results, batch, strict=True)])
        return results
    finally:
        drop_staging(con)


def read_and_hash(paths: list[Path], ahead: int = 4) -> Iterator[tuple[bytes, str]]:
    """Each file's bytes and SHA-256, in order. Reading and hashing release the GIL, so a few
    files are read ahead on other threads while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[Future[tuple[bytes, str]]] = deque()
        for path in paths:
            pending.append(pool.submit(_read_and_hash, path))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


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
            batch.append((position, _refused(spec, path, rel_path, admission)))
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
            pending.result = _unsupported(spec, path, rel_path)
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
    unread = con.execute(
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
    problems.extend(f"{path}: {status} ({error})" for path, status, error in unread)
    return problems
