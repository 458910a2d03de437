"""Batch validation against the data contract, and the verdict on every record of a batch.

The files of a batch are staged together as Arrow tables, then typed and checked by the
contract's SQL in DuckDB (temp table ``judged``: every record, with a reason if invalid). Valid
records whose id repeats, in the batch or in the raw table, get a verdict (temp table
``contested``: accepted, duplicate or conflict). The last steps write accepted records to the
kind's raw table and the rest to ``raw.rejected_records``, each in one set-based statement.
Batch scoring (``feedback_pipeline.serving.batch``) reuses the staging and the validation, so
input to scoring is judged exactly as ingestion judges it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from feedback_pipeline.ingest.contract import record_hash_sql, validation_sql
from feedback_pipeline.ingest.manifest import FileResult, PendingFile
from feedback_pipeline.ingest.readers import (
    DOCS_SCHEMA,
    LINES_SCHEMA,
    UnreadableFile,
    csv_docs,
    gunzip,
    is_utf8,
    json_lines,
    parquet_docs,
    with_file_index,
)
from feedback_pipeline.warehouse.schema import KindSpec
from feedback_pipeline.warehouse.tables import REJECTED_RECORDS


@dataclass
class Staged:
    """A batch's records, grouped by how they are parsed."""

    text_lines: list[pa.Table]  # JSON lines of valid UTF-8 files
    byte_lines: list[pa.Table]  # JSON lines of files with invalid UTF-8 somewhere
    strict_docs: list[pa.Table]  # parquet rows as JSON
    lenient_docs: list[pa.Table]  # CSV rows as JSON (numbers and booleans written as text)
    files: pa.Table  # file_index, path, content_hash


def stage_batch(con: duckdb.DuckDBPyConnection, kind: str, batch: list[PendingFile]) -> Staged:
    """Every file of the batch read into ``Staged`` by its format; a file that cannot be read
    as a whole gets its ``unreadable`` result instead."""
    staged = Staged([], [], [], [], pa.table({}))
    for index, pending in enumerate(batch):
        if pending.result is not None:  # refused or unsupported: never opened, not even by path
            continue
        try:
            if pending.fmt in ("jsonl", "jsonl.gz"):
                data = pending.data if pending.fmt == "jsonl" else gunzip(pending.data)
                valid_utf8 = is_utf8(data)  # the common case skips per-line decoding in SQL
                lines = json_lines(data, index, as_text=valid_utf8)
                (staged.text_lines if valid_utf8 else staged.byte_lines).append(lines)
            elif pending.fmt == "csv":
                docs = csv_docs(con, pending.path, pending.data)
                staged.lenient_docs.append(with_file_index(docs, index))
            elif pending.fmt == "parquet":
                staged.strict_docs.append(with_file_index(parquet_docs(con, pending.path), index))
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


def classify_contested(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
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


def count_verdicts(con: duckdb.DuckDBPyConnection) -> dict[int, tuple[int, int, int, int]]:
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


def insert_accepted(con: duckdb.DuckDBPyConnection, spec: KindSpec, paths: list[str]) -> None:
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


def insert_rejected(con: duckdb.DuckDBPyConnection, spec: KindSpec) -> None:
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
