"""Format readers: a landing file's bytes turned into Arrow tables of records, one per format.

JSON lines (``.jsonl``, ``.ndjson``, ``.jsonl.gz``) are split into lines with numpy, zero-copy,
and parsed later in DuckDB; CSV and parquet rows are read by DuckDB and come out as JSON docs.
Every record keeps the line (or row) it came from. A file that cannot be read as a whole
(a damaged gzip stream, a bad CSV header, a corrupt parquet file) raises ``UnreadableFile``:
a file lands whole or not at all. Nothing here runs Python per record.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from feedback_pipeline.ingest.contract import sql_string

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".csv": "csv",
    ".parquet": "parquet",
}
UTF8_BOM = b"\xef\xbb\xbf"

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


class UnreadableFile(Exception):
    """The file as a whole cannot be read (corrupt parquet, broken gzip header...)."""


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


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


def with_file_index(table: pa.Table, file_index: int) -> pa.Table:
    """``table`` with a first column saying which file of the batch it came from."""
    column = pa.array(np.full(table.num_rows, file_index, dtype=np.int64))
    return table.add_column(0, "file_index", column)


def json_lines(data: bytes, file_index: int, as_text: bool) -> pa.Table:
    """A JSON-lines file's records, each marked ``unterminated`` when it is a last line
    without a newline (so a parse failure there reads as a truncated file)."""
    lines = split_lines(data, as_text=as_text)
    unterminated = np.zeros(lines.num_rows, dtype=bool)
    if lines.num_rows and not data.endswith(b"\n"):
        unterminated[-1] = True
    return with_file_index(lines, file_index).add_column(2, "unterminated", pa.array(unterminated))


def _read_with_duckdb(
    con: duckdb.DuckDBPyConnection, query: str, path: Path, what: str
) -> pa.Table:
    """``query`` run on ``path`` (its one parameter); a DuckDB error makes the file unreadable."""
    try:
        return con.sql(query, params=[str(path)]).to_arrow_table()
    except duckdb.Error as error:
        raise UnreadableFile(f"not a readable {what} file: {error}") from None


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


def csv_docs(con: duckdb.DuckDBPyConnection, path: Path, data: bytes) -> pa.Table:
    """CSV rows as JSON docs; records the CSV parser refuses come with its reason.

    RFC 4180 with a header: comma-separated, ``"`` quotes, a quote in a quoted cell doubled,
    cells may hold line breaks. Every record carries the line it starts on.
    """
    if not data or data.isspace():
        return DOCS_SCHEMA.remove(0).empty_table()
    columns = ", ".join(f"{sql_string(name)}: 'VARCHAR'" for name in _csv_header(data))
    con.execute("DROP TABLE IF EXISTS csv_reject_errors; DROP TABLE IF EXISTS csv_reject_scans")
    good = _read_with_duckdb(
        con,
        f"""
        SELECT to_json(t)::VARCHAR AS doc FROM read_csv(?, auto_detect = false,
            header = true, delim = ',', quote = '"', escape = '"', columns = {{{columns}}},
            store_rejects = true, rejects_table = 'csv_reject_errors',
            rejects_scan = 'csv_reject_scans') t
        """,
        path,
        "CSV",
    )
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


def parquet_docs(con: duckdb.DuckDBPyConnection, path: Path) -> pa.Table:
    """Parquet rows as JSON docs, numbered from 1 in file order."""
    table = _read_with_duckdb(
        con,
        """
        SELECT line_no, doc AS raw_text, doc, NULL::VARCHAR AS parse_error
        FROM (
            SELECT file_row_number + 1 AS line_no, to_json(t)::VARCHAR AS doc
            FROM read_parquet(?, file_row_number = true) t
        )
        """,
        path,
        "parquet",
    )
    return table.cast(DOCS_SCHEMA.remove(0))
