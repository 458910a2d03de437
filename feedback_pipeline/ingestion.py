"""Land files from the landing zone into ``raw.*`` tables, exactly once, losing nothing.

DESIGN section 4. One file is one transaction. Every record of a file ends up in exactly one
of: the kind's raw table (accepted), the duplicate count (an exact repeat of an id), or
``raw.rejected_records`` (with a reason), and ``raw.ingested_files`` stores
``records_read = accepted + duplicates + rejected``. Lines are split with numpy and parsed,
typed and validated in DuckDB; no Python runs per record.

New files are read, validated and de-duplicated together, in batches of up to
``BATCH_BYTES``, so DuckDB works on large vectors on all cores; then each file's rows are
written in a transaction of its own, in file order, so a crash leaves whole files or nothing.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from feedback_pipeline.contract import KINDS, KindSpec, validation_sql
from feedback_pipeline.warehouse import transaction

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".csv": "csv",
    ".parquet": "parquet",
}
UTF8_BOM = b"\xef\xbb\xbf"
BATCH_BYTES = 256 * 1024 * 1024

LINES_SCHEMA = pa.schema([("file_index", pa.int64()), ("line_no", pa.int64())])
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
    status: str  # ingested | unreadable | unsupported | skipped (already ingested)
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
    """Every regular file under ``landing/<kind>/``, sorted so ingestion order is stable."""
    folder = landing_dir / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def split_lines(data: bytes, as_text: bool = False) -> pa.Table:
    """``(line_no, line)`` for every line of ``data``, zero-copy, without a per-line loop.

    ``as_text`` (only for data known to be valid UTF-8) yields strings instead of bytes.
    Line numbers count every line; blank lines are left out.
    """
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10) + 1
    if len(data) > start and (len(ends) == 0 or ends[-1] != len(data)):
        ends = np.append(ends, len(data))
    ends = ends[ends > start]
    offsets = np.concatenate([[start], ends]).astype(np.int64)
    array_type = pa.large_string() if as_text else pa.large_binary()
    lines = pa.Array.from_buffers(
        array_type, len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    table = pa.table({"line_no": np.arange(1, len(ends) + 1, dtype=np.int64), "line": lines})
    # Blank lines (only a line ending) are not records.
    lengths = np.diff(offsets)
    first_byte = buffer[np.minimum(offsets[:-1], max(len(data) - 1, 0))] if len(data) else lengths
    blank = ((lengths == 1) & (first_byte == 10)) | ((lengths == 2) & (first_byte == 13))
    return table.filter(pa.array(~blank)) if blank.any() else table


def gunzip_tolerant(data: bytes) -> bytes:
    """Decompress what can be decompressed; a truncated gzip keeps its complete lines."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return decompressor.decompress(data) + decompressor.flush()
    except zlib.error as error:
        raise UnreadableFile(f"not a readable gzip file: {error}") from None


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


def _with_file_index(table: pa.Table, file_index: int) -> pa.Table:
    column = pa.array(np.full(table.num_rows, file_index, dtype=np.int64))
    return table.add_column(0, "file_index", column)


def _csv_docs(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    """CSV rows as JSON docs; lines the CSV parser refuses come with its reason.

    Line numbers assume one record per line (no newlines inside quoted cells).
    """
    if path.stat().st_size == 0:
        return DOCS_SCHEMA.remove(0).empty_table()
    con.execute("DROP TABLE IF EXISTS csv_reject_errors; DROP TABLE IF EXISTS csv_reject_scans")
    try:
        good = con.sql(
            """
            SELECT to_json(t)::VARCHAR AS doc FROM read_csv(?, all_varchar = true, header = true,
                store_rejects = true, rejects_table = 'csv_reject_errors',
                rejects_scan = 'csv_reject_scans') t
            """,
            params=[str(path)],
        ).to_arrow_table()
    except duckdb.Error as error:
        raise UnreadableFile(f"not a readable CSV file: {error}") from None
    bad = con.sql(
        """
        SELECT line AS line_no, any_value(csv_line) AS raw_text, NULL::VARCHAR AS doc,
               'unparseable CSV line: ' || string_agg(error_type || ': ' || error_message, '; ')
                   AS parse_error
        FROM csv_reject_errors GROUP BY line ORDER BY line
        """
    ).to_arrow_table()
    con.execute("DROP TABLE csv_reject_errors; DROP TABLE csv_reject_scans")
    # Good rows keep file order: their line numbers are the data lines the parser did not refuse.
    all_lines = np.arange(2, 2 + good.num_rows + bad.num_rows, dtype=np.int64)
    good_lines = np.setdiff1d(all_lines, bad.column("line_no").to_numpy(), assume_unique=True)
    docs = good.column("doc")
    good_docs = pa.table(
        {
            "line_no": good_lines[: good.num_rows],
            "raw_text": docs,
            "doc": docs,
            "parse_error": pa.nulls(good.num_rows, pa.large_string()),
        }
    )
    schema = DOCS_SCHEMA.remove(0)
    return pa.concat_tables([good_docs.cast(schema), bad.cast(schema)])


def _parquet_docs(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    try:
        table = con.sql(
            """
            SELECT file_row_number + 1 AS line_no, to_json(t)::VARCHAR AS raw_text,
                   to_json(t)::VARCHAR AS doc, NULL::VARCHAR AS parse_error
            FROM read_parquet(?, file_row_number = true) t
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
    files: pa.Table  # file_index, path, last_line, ends_with_newline


def stage_batch(con: duckdb.DuckDBPyConnection, kind: str, batch: list[PendingFile]) -> Staged:
    staged = Staged([], [], [], [], pa.table({}))
    last_lines, newline_endings = [], []
    for index, pending in enumerate(batch):
        last_line, ends_with_newline = 0, True
        try:
            if pending.fmt in ("jsonl", "jsonl.gz"):
                data = pending.data if pending.fmt == "jsonl" else gunzip_tolerant(pending.data)
                valid_utf8 = is_utf8(data)  # the common case skips per-line decoding in SQL
                lines = _with_file_index(split_lines(data, as_text=valid_utf8), index)
                (staged.text_lines if valid_utf8 else staged.byte_lines).append(lines)
                last_line = lines.column("line_no")[-1].as_py() if lines.num_rows else 0
                ends_with_newline = data.endswith(b"\n")
            elif pending.fmt == "csv":
                staged.lenient_docs.append(_with_file_index(_csv_docs(con, pending.path), index))
            elif pending.fmt == "parquet":
                staged.strict_docs.append(_with_file_index(_parquet_docs(con, pending.path), index))
        except UnreadableFile as error:
            pending.result = FileResult(kind, pending.rel_path, "unreadable", error=str(error))
        last_lines.append(last_line)
        newline_endings.append(ends_with_newline)
    staged.files = pa.table(
        {
            "file_index": np.arange(len(batch), dtype=np.int64),
            "path": [p.rel_path for p in batch],
            "last_line": np.array(last_lines, dtype=np.int64),
            "ends_with_newline": newline_endings,
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
        WITH parsed AS (
            SELECT file_index, line_no, line AS raw_text, false AS bad_utf8,
                   TRY_CAST(line AS JSON) AS doc
            FROM text_lines
            UNION ALL
            SELECT file_index, line_no, coalesce(TRY(decode(line)), line::VARCHAR),
                   TRY(decode(line)) IS NULL, TRY_CAST(TRY(decode(line)) AS JSON)
            FROM byte_lines
        )
        SELECT p.file_index, p.line_no, p.raw_text, p.doc,
               CASE
                   WHEN p.bad_utf8 THEN 'invalid UTF-8'
                   WHEN p.doc IS NOT NULL THEN NULL
                   WHEN p.line_no = f.last_line AND NOT f.ends_with_newline
                       THEN 'truncated last line (malformed JSON)'
                   ELSE 'malformed JSON'
               END AS parse_error
        FROM parsed p JOIN batch_files f USING (file_index)
        UNION ALL
        SELECT file_index, line_no, raw_text, doc::JSON, parse_error FROM strict_docs;
        CREATE OR REPLACE TEMP VIEW lenient_view AS
        SELECT file_index, line_no, raw_text, doc::JSON AS doc, parse_error FROM lenient_docs;
    """)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE judged AS "
        f"SELECT * FROM ({validation_sql(spec, 'strict_view')}) UNION ALL "
        f"SELECT * FROM ({validation_sql(spec, 'lenient_view', lenient=True)})"
    )


def drop_staging(con: duckdb.DuckDBPyConnection) -> None:
    """Forget the batch's views and registered tables."""
    con.execute("DROP VIEW IF EXISTS strict_view; DROP VIEW IF EXISTS lenient_view")
    for name in ("batch_files", "text_lines", "byte_lines", "strict_docs", "lenient_docs"):
        con.unregister(name)


def _classify(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
    """Temp table ``classified``: each valid record is accepted, a duplicate, or a conflict.

    The first occurrence of an id (earlier files of the batch first) is accepted unless the
    table already holds it; later ones are duplicates when they repeat the stored (or first)
    content, and conflicts otherwise.
    """
    key = spec.id_field
    # A record's position in the batch, as one sortable number: file index, then line.
    position = "(file_index * 4294967296 + line_no)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE classified AS
        WITH valid AS (
            SELECT * FROM judged WHERE reason IS NULL
        ), firsts AS (
            SELECT {key}, min({position}) AS first_position,
                   arg_min(record_hash, {position}) AS first_hash
            FROM valid GROUP BY {key}
        ), existing AS (
            SELECT {key}, record_hash AS existing_hash, source_file AS existing_file
            FROM {spec.table}
            WHERE {key} IN (SELECT {key} FROM firsts)
        ), ranked AS (
            SELECT v.*, {position} = f.first_position AS is_first, f.first_hash,
                   f.first_position % 4294967296 AS first_line,
                   f.first_position // 4294967296 AS first_file
            FROM valid v JOIN firsts f USING ({key})
        )
        SELECT r.*, coalesce(x.existing_file, b.path) AS canonical_file,
               CASE
                   WHEN r.is_first AND x.{key} IS NULL THEN 'accepted'
                   WHEN r.record_hash = coalesce(x.existing_hash, r.first_hash) THEN 'duplicate'
                   WHEN x.{key} IS NULL AND r.first_file = r.file_index THEN 'conflict_in_file'
                   ELSE 'conflict_existing'
               END AS verdict
        FROM ranked r
        LEFT JOIN existing x USING ({key})
        JOIN batch_files b ON b.file_index = r.first_file
    """)


def _count_verdicts(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[int, int, int, int]]:
    """Per file index: read, accepted, duplicates, rejected."""
    rows = con.execute(
        """
        WITH judged_counts AS (
            SELECT file_index, count(*) AS read,
                   count(*) FILTER (WHERE reason IS NOT NULL) AS invalid
            FROM judged GROUP BY file_index
        ), verdict_counts AS (
            SELECT file_index,
                   count(*) FILTER (WHERE verdict = 'accepted') AS accepted,
                   count(*) FILTER (WHERE verdict = 'duplicate') AS duplicates,
                   count(*) FILTER (WHERE verdict LIKE 'conflict%') AS conflicts
            FROM classified GROUP BY file_index
        )
        SELECT j.file_index, j.read, coalesce(v.accepted, 0), coalesce(v.duplicates, 0),
               j.invalid + coalesce(v.conflicts, 0)
        FROM judged_counts j LEFT JOIN verdict_counts v USING (file_index)
        """
    ).fetchall()
    return {row[0]: tuple(int(v) for v in row[1:]) for row in rows}


def _insert_accepted(
    con: duckdb.DuckDBPyConnection, spec: KindSpec, file_index: int, rel_path: str
) -> None:
    columns = ", ".join(spec.columns)
    con.execute(
        f"""
        INSERT INTO {spec.table} ({columns}, record_hash, source_file, source_line, ingested_at)
        SELECT {columns}, record_hash, ?, line_no, now()::TIMESTAMP
        FROM classified WHERE file_index = ? AND verdict = 'accepted' ORDER BY line_no
        """,
        [rel_path, file_index],
    )


def _insert_rejected(
    con: duckdb.DuckDBPyConnection,
    spec: KindSpec,
    file_index: int,
    rel_path: str,
    content_hash: str,
) -> None:
    """Invalid records and conflicting duplicates, each with a stable reason and a detail."""
    key = spec.id_field
    con.execute(
        f"""
        INSERT INTO raw.rejected_records
        SELECT ?, ?, ?, line_no, raw_text, reason, detail, now()::TIMESTAMP FROM (
            SELECT line_no, rtrim(raw_text, chr(13) || chr(10)) AS raw_text, reason,
                   NULL AS detail
            FROM judged WHERE file_index = $4 AND reason IS NOT NULL
            UNION ALL
            SELECT line_no, raw_text,
                   CASE verdict
                       WHEN 'conflict_in_file'
                           THEN 'conflicting duplicate: {key} repeated in the file, other content'
                       ELSE 'conflicting duplicate: {key} already ingested, other content'
                   END,
                   CASE verdict
                       WHEN 'conflict_in_file'
                           THEN '{key} ' || {key} || ' first appears at line ' || first_line
                       ELSE '{key} ' || {key} || ' was ingested from ' || canonical_file
                   END
            FROM classified WHERE file_index = $4 AND verdict LIKE 'conflict%'
        ) ORDER BY line_no
        """.replace("?, ?, ?,", "$1, $2, $3,"),
        [spec.kind, rel_path, content_hash, file_index],
    )


def write_manifest(
    con: duckdb.DuckDBPyConnection,
    result: FileResult,
    content_hash: str,
    fmt: str | None,
    size_bytes: int,
    mtime_ns: int | None = None,
) -> None:
    con.execute(
        """
        INSERT INTO raw.ingested_files (kind, path, content_hash, file_format, size_bytes, status,
            error, records_read, accepted, duplicates, rejected, mtime_ns, ingested_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)
        """,
        [
            result.kind,
            result.path,
            content_hash,
            fmt,
            size_bytes,
            result.status,
            result.error,
            result.records_read,
            result.accepted,
            result.duplicates,
            result.rejected,
            mtime_ns,
        ],
    )


@dataclass
class Manifest:
    """What was ingested: by path and content hash, and by path, size and mtime (so a rerun
    skips unchanged files without reading them)."""

    hashes: set[tuple[str, str]]
    stats: set[tuple[str, int, int]]

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, kind: str) -> Manifest:
        rows = con.execute(
            "SELECT path, content_hash, size_bytes, mtime_ns FROM raw.ingested_files "
            "WHERE kind = ?",
            [kind],
        ).fetchall()
        return cls(
            {(path, digest) for path, digest, _, _ in rows},
            {(path, size, mtime) for path, _, size, mtime in rows if mtime is not None},
        )


def _unsupported(spec: KindSpec, path: Path, rel_path: str) -> FileResult:
    return FileResult(
        spec.kind,
        rel_path,
        "unsupported",
        error=f"unsupported file extension {''.join(path.suffixes) or '(none)'!r}; "
        f"expected one of {', '.join(FORMATS)}",
    )


def ingest_batch(
    con: duckdb.DuckDBPyConnection, spec: KindSpec, batch: list[PendingFile]
) -> list[FileResult]:
    """Validate and classify the batch together, then write each file in its own transaction."""
    staged = stage_batch(
        con, spec.kind, batch
    )  # parsing only reads, so it runs before any transaction
    try:
        validate_batch(con, spec, staged)
        _classify(con, spec)
        counts = _count_verdicts(con)
        results = []
        for index, pending in enumerate(batch):
            with transaction(con):
                result = pending.result
                if result is None:
                    read, accepted, duplicates, rejected = counts.get(index, (0, 0, 0, 0))
                    _insert_accepted(con, spec, index, pending.rel_path)
                    _insert_rejected(con, spec, index, pending.rel_path, pending.content_hash)
                    result = FileResult(
                        spec.kind,
                        pending.rel_path,
                        "ingested",
                        read,
                        accepted,
                        duplicates,
                        rejected,
                    )
                write_manifest(
                    con,
                    result,
                    pending.content_hash,
                    pending.fmt,
                    len(pending.data),
                    pending.mtime_ns,
                )
            results.append(result)
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
                )
        batch, batch_size = [], 0

    for position, path in enumerate(paths):
        rel_path = path.relative_to(landing_dir).as_posix()
        stat = path.stat()
        if (rel_path, stat.st_size, stat.st_mtime_ns) in manifest.stats:
            results[position] = FileResult(spec.kind, rel_path, "skipped")
            continue
        data = path.read_bytes()
        content_hash = hashlib.sha256(data).hexdigest()
        if (rel_path, content_hash) in manifest.hashes:  # touched, but the same content
            results[position] = FileResult(spec.kind, rel_path, "skipped")
            continue
        fmt = file_format(path)
        pending = PendingFile(path, rel_path, data, content_hash, fmt, stat.st_mtime_ns)
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
