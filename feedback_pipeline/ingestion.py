"""Land files from the landing zone into ``raw.*`` tables, exactly once, losing nothing.

DESIGN section 4. One file is one transaction. Every record of a file ends up in exactly one
of: the kind's raw table (accepted), the duplicate count (an exact repeat of an id), or
``raw.rejected_records`` (with a reason), and ``raw.ingested_files`` stores
``records_read = accepted + duplicates + rejected``. Lines are split with numpy and parsed,
typed and validated in DuckDB; no Python runs per record.
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

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl.gz", ".csv": "csv"}
FORMATS[".parquet"] = "parquet"
UTF8_BOM = b"\xef\xbb\xbf"


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


def _jsonl_docs(con: duckdb.DuckDBPyConnection, data: bytes) -> None:
    """Stage ``docs`` from JSON lines: invalid UTF-8, malformed or truncated lines get a reason."""
    ends_with_newline = data.endswith(b"\n")
    valid_utf8 = is_utf8(data)  # the common case skips per-line decoding in SQL
    lines = split_lines(data, as_text=valid_utf8)
    last_line = lines.column("line_no")[-1].as_py() if lines.num_rows else 0
    # Small record batches let DuckDB parse and validate one file on all cores.
    batches = lines.to_batches(max_chunksize=4096)
    con.register("landing_lines", pa.Table.from_batches(batches, schema=lines.schema))
    # The JSON parser ignores the trailing CR/LF; raw text is trimmed only for rejected lines.
    text = "line" if valid_utf8 else "TRY(decode(line))"
    raw = "line" if valid_utf8 else "coalesce(TRY(decode(line)), line::VARCHAR)"
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW docs AS
        WITH parsed AS (
            SELECT line_no, {raw} AS raw_text, {text} IS NULL AS bad_utf8,
                   TRY_CAST({text} AS JSON) AS doc
            FROM landing_lines
        )
        SELECT line_no, raw_text, doc,
               CASE
                   WHEN bad_utf8 THEN 'invalid UTF-8'
                   WHEN doc IS NOT NULL THEN NULL
                   WHEN line_no = {last_line} AND NOT {ends_with_newline}
                       THEN 'truncated last line (malformed JSON)'
                   ELSE 'malformed JSON'
               END AS parse_error
        FROM parsed
    """)  # a view over the registered lines: validation reads them in parallel


def _csv_docs(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Stage ``docs`` from CSV; lines the CSV parser refuses are staged with its reason.

    Line numbers assume one record per line (no newlines inside quoted cells).
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE docs "
        "(line_no BIGINT, raw_text VARCHAR, doc JSON, parse_error VARCHAR)"
    )
    if path.stat().st_size == 0:
        return
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
        SELECT line AS line_no, any_value(csv_line) AS raw_text,
               'unparseable CSV line: ' || string_agg(error_type || ': ' || error_message, '; ')
                   AS parse_error
        FROM csv_reject_errors GROUP BY line ORDER BY line
        """
    ).to_arrow_table()
    # Good rows keep file order: their line numbers are the data lines the parser did not refuse.
    all_lines = np.arange(2, 2 + good.num_rows + bad.num_rows, dtype=np.int64)
    good_lines = np.setdiff1d(all_lines, bad.column("line_no").to_numpy(), assume_unique=True)
    con.register("csv_good", good.append_column("line_no", pa.array(good_lines[: good.num_rows])))
    con.register("csv_bad", bad)
    con.execute(
        """
        INSERT INTO docs
        SELECT line_no, doc, doc::JSON, NULL FROM csv_good
        UNION ALL
        SELECT line_no, raw_text, NULL, parse_error FROM csv_bad
        """
    )
    con.unregister("csv_good")
    con.unregister("csv_bad")
    con.execute("DROP TABLE csv_reject_errors; DROP TABLE csv_reject_scans")


def _parquet_docs(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE docs AS
            SELECT file_row_number + 1 AS line_no, to_json(t)::VARCHAR AS raw_text,
                   to_json(t) AS doc, NULL::VARCHAR AS parse_error
            FROM read_parquet(?, file_row_number = true) t
            """,
            [str(path)],
        )
    except duckdb.Error as error:
        raise UnreadableFile(f"not a readable parquet file: {error}") from None


def stage_docs(con: duckdb.DuckDBPyConnection, path: Path, data: bytes, fmt: str) -> None:
    """Create temp relation ``docs(line_no, raw_text, doc, parse_error)`` for one file."""
    drop_staging(con)
    if fmt == "jsonl":
        _jsonl_docs(con, data)
    elif fmt == "jsonl.gz":
        _jsonl_docs(con, gunzip_tolerant(data))
    elif fmt == "csv":
        _csv_docs(con, path)
    elif fmt == "parquet":
        _parquet_docs(con, path)
    else:
        raise ValueError(f"unknown format {fmt}")


def drop_staging(con: duckdb.DuckDBPyConnection) -> None:
    """Forget the previous file's staging relations and its registered lines."""
    kinds = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_name = 'docs' AND table_catalog = 'temp'"
    ).fetchall()
    for (table_type,) in kinds:
        con.execute("DROP VIEW docs" if table_type == "VIEW" else "DROP TABLE docs")
    con.unregister("landing_lines")


def _classify(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
    """Temp table ``classified``: each valid record is accepted, a duplicate, or a conflict."""
    key = spec.id_field
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE classified AS
        WITH ranked AS (
            SELECT j.*,
                   row_number() OVER w AS occurrence,
                   first_value(record_hash) OVER w AS first_hash,
                   first_value(line_no) OVER w AS first_line
            FROM judged j
            WHERE reason IS NULL
            WINDOW w AS (PARTITION BY {key} ORDER BY line_no)
        ), existing AS (
            SELECT {key}, record_hash AS existing_hash, source_file AS existing_file
            FROM {spec.table}
            WHERE {key} IN (SELECT {key} FROM ranked)
        )
        SELECT r.*, x.existing_file,
               CASE
                   WHEN r.occurrence > 1 AND r.record_hash = r.first_hash THEN 'duplicate'
                   WHEN r.occurrence > 1 THEN 'conflict_in_file'
                   WHEN x.{key} IS NULL THEN 'accepted'
                   WHEN x.existing_hash = r.record_hash THEN 'duplicate'
                   ELSE 'conflict_existing'
               END AS verdict
        FROM ranked r LEFT JOIN existing x USING ({key})
    """)


def _insert_accepted(con: duckdb.DuckDBPyConnection, spec: KindSpec, rel_path: str) -> None:
    columns = ", ".join(spec.columns)
    con.execute(
        f"""
        INSERT INTO {spec.table} ({columns}, record_hash, source_file, source_line, ingested_at)
        SELECT {columns}, record_hash, ?, line_no, now()::TIMESTAMP
        FROM classified WHERE verdict = 'accepted' ORDER BY line_no
        """,
        [rel_path],
    )


def _insert_rejected(
    con: duckdb.DuckDBPyConnection, spec: KindSpec, rel_path: str, content_hash: str
) -> None:
    """Invalid records and conflicting duplicates, each with a stable reason and a detail."""
    key = spec.id_field
    con.execute(
        f"""
        INSERT INTO raw.rejected_records
        SELECT ?, ?, ?, line_no, raw_text, reason, detail, now()::TIMESTAMP FROM (
            SELECT line_no, rtrim(raw_text, chr(13) || chr(10)) AS raw_text, reason,
                   NULL AS detail
            FROM judged WHERE reason IS NOT NULL
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
                       ELSE '{key} ' || {key} || ' was ingested from ' || existing_file
                   END
            FROM classified WHERE verdict LIKE 'conflict%'
        ) ORDER BY line_no
        """,
        [spec.kind, rel_path, content_hash],
    )


def _count_verdicts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int, int]:
    read, invalid = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE reason IS NOT NULL) FROM judged"
    ).fetchall()[0]
    accepted, duplicates, conflicts = con.execute(
        """
        SELECT count(*) FILTER (WHERE verdict = 'accepted'),
               count(*) FILTER (WHERE verdict = 'duplicate'),
               count(*) FILTER (WHERE verdict LIKE 'conflict%')
        FROM classified
        """
    ).fetchall()[0]
    return read, accepted, duplicates, invalid + conflicts


def write_manifest(
    con: duckdb.DuckDBPyConnection,
    result: FileResult,
    content_hash: str,
    fmt: str | None,
    size_bytes: int,
) -> None:
    con.execute(
        "INSERT INTO raw.ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
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
        ],
    )


def already_ingested(con: duckdb.DuckDBPyConnection, rel_path: str, content_hash: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM raw.ingested_files WHERE path = ? AND content_hash = ?",
        [rel_path, content_hash],
    ).fetchall()[0]
    return bool(row[0])


def ingest_file(
    con: duckdb.DuckDBPyConnection, landing_dir: Path, path: Path, spec: KindSpec
) -> FileResult:
    """Ingest one landing file in one transaction; a file seen before (same path and content)
    is skipped, so reruns add nothing."""
    rel_path = path.relative_to(landing_dir).as_posix()
    data = path.read_bytes()
    content_hash = hashlib.sha256(data).hexdigest()
    if already_ingested(con, rel_path, content_hash):
        return FileResult(spec.kind, rel_path, "skipped")
    fmt = file_format(path)
    result: FileResult | None = None
    if fmt is None:
        result = FileResult(
            spec.kind,
            rel_path,
            "unsupported",
            error=f"unsupported file extension {''.join(path.suffixes) or '(none)'!r}; "
            f"expected one of {', '.join(FORMATS)}",
        )
    else:
        try:  # parsing only reads, so it runs before the transaction that writes
            stage_docs(con, path, data, fmt)
        except UnreadableFile as error:
            result = FileResult(spec.kind, rel_path, "unreadable", error=str(error))
    with transaction(con):
        if result is None:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE judged AS "
                + validation_sql(spec, "docs", lenient=fmt == "csv")
            )
            _classify(con, spec)
            read, accepted, duplicates, rejected = _count_verdicts(con)
            _insert_accepted(con, spec, rel_path)
            _insert_rejected(con, spec, rel_path, content_hash)
            result = FileResult(
                spec.kind, rel_path, "ingested", read, accepted, duplicates, rejected
            )
        write_manifest(con, result, content_hash, fmt, len(data))
    drop_staging(con)
    return result


def ingest_kind(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    kind: str,
    progress: Callable[[str], None] | None = None,
) -> list[FileResult]:
    """Ingest every new file of one kind; returns one result per file (skipped ones included)."""
    spec = KINDS[kind]
    files = landing_files(landing_dir, kind)
    results = []
    for index, path in enumerate(files, start=1):
        result = ingest_file(con, landing_dir, path, spec)
        results.append(result)
        if progress and result.status != "skipped":
            progress(
                f"[{index}/{len(files)}] {result.path}: {result.status}, read {result.records_read}"
                f", accepted {result.accepted}, duplicates {result.duplicates}, "
                f"rejected {result.rejected}"
            )
    return results
