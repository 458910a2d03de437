"""Ingestion: exactly once, nothing lost, robust to broken files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from feedback_pipeline.ingest import landing_files as ingestion
from feedback_pipeline.ingest import readers
from feedback_pipeline.ingest.landing_files import ingest_file, ingest_kind
from feedback_pipeline.warehouse import summaries as reporting
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline_tests.conftest import feedback, prediction

PREDICTIONS = KINDS["predictions"]


def count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return con.execute(sql).fetchall()[0][0]


def manifest(con: duckdb.DuckDBPyConnection, path: str) -> tuple:
    return con.execute(
        "SELECT status, records_read, accepted, duplicates, rejected FROM raw.ingested_files "
        "WHERE path = ?",
        [path],
    ).fetchall()[0]


def test_broken_lines_never_take_the_good_lines_down(con, landing, write_landing):
    body = (
        json.dumps(prediction("a")).encode()
        + b"\r\n"  # CRLF
        + json.dumps(prediction("b", confidence=float("nan"))).encode()
        + b"\n"  # bare NaN
        + b"\n"  # blank line: not a record
        + b'{"prediction_id": "caf\xe9"}\n'  # invalid UTF-8
        + json.dumps(prediction("c")).encode()
        + b"\n"
        + b'{"prediction_id": "d", "predicted_at": "2026-01'  # truncated last line
    )
    path = write_landing("predictions", "mixed.jsonl", body)

    result = ingest_file(con, landing, path, PREDICTIONS)

    assert (result.status, result.records_read, result.accepted, result.rejected) == (
        "ingested",
        5,
        2,
        3,
    )
    reasons = con.execute(
        "SELECT line_number, reason FROM raw.rejected_records ORDER BY line_number"
    ).fetchall()
    assert reasons == [
        (2, "confidence must be a finite number"),
        (4, "invalid UTF-8"),
        (6, "truncated last line (malformed JSON)"),
    ]
    assert con.execute(
        "SELECT prediction_id, source_line FROM raw.predictions ORDER BY 1"
    ).fetchall() == [("a", 1), ("c", 5)]


@pytest.mark.parametrize(
    ("name", "body", "status", "error_part"),
    [
        ("empty.jsonl", b"", "ingested", None),
        ("notes.txt", b"hello\n", "unsupported", "unsupported file extension '.txt'"),
        ("noext", b"{}\n", "unsupported", "unsupported file extension '(none)'"),
        ("broken.parquet", b"PAR1 not really", "unreadable", "not a readable parquet file"),
        ("broken.jsonl.gz", b"\x1f\x8b\x08garbage", "unreadable", "not a readable gzip file"),
    ],
)
def test_unparseable_files_are_recorded_not_crashed_on(
    con, landing, write_landing, name, body, status, error_part
):
    path = write_landing("predictions", name, body)
    result = ingest_file(con, landing, path, PREDICTIONS)
    assert result.status == status
    assert result.records_read == 0
    if error_part:
        assert error_part in result.error
    assert count(con, "SELECT count(*) FROM raw.ingested_files") == 1


def test_truncated_gzip_lands_nothing_and_says_so(con, landing, write_landing):
    """A file lands whole or not at all: a cut gzip is unreadable, its complete lines too
    (feedback_pipeline_tests/faults/test_landing_faults.py has the replacement landing once)."""
    lines = b"".join(json.dumps(prediction(f"p{i}")).encode() + b"\n" for i in range(200))
    compressed = gzip.compress(lines)
    path = write_landing("predictions", "cut.jsonl.gz", compressed[: len(compressed) * 3 // 4])
    result = ingest_file(con, landing, path, PREDICTIONS)
    assert (result.status, result.records_read, result.accepted) == ("unreadable", 0, 0)
    assert "gzip stream ended early" in result.error
    assert count(con, "SELECT count(*) FROM raw.predictions") == 0
    assert count(con, "SELECT count(*) FROM raw.rejected_records") == 0


def test_csv_and_parquet_land_with_the_same_rules(con, landing, write_landing):
    csv = (
        b"prediction_id,predicted_at,confidence,features,ml_enhanced\n"
        b'c1,2026-01-05T10:00:00Z,0.5,"{""a"": 1}",true\n'
        b'c2,2026-01-05T10:00:00Z,1.5,"{""a"": 1}",false\n'
        b"c3,2026-01-05\n"
        b'c4,2026-01-05T11:00:00Z,0.25,"{""a"": 2}",\n'
    )
    csv_path = write_landing("predictions", "batch.csv", csv)
    result = ingest_file(con, landing, csv_path, PREDICTIONS)
    assert (result.records_read, result.accepted, result.rejected) == (4, 2, 2)
    rejected = con.execute(
        "SELECT line_number, reason FROM raw.rejected_records ORDER BY 1"
    ).fetchall()
    assert rejected[0] == (3, "confidence out of range [0, 1]")
    assert rejected[1][0] == 4 and rejected[1][1].startswith("unparseable CSV line")

    parquet_path = landing / "predictions" / "batch.parquet"
    con.execute(
        f"""COPY (SELECT 'q1' AS prediction_id, TIMESTAMP '2026-01-05 10:00:00' AS predicted_at,
                 0.7 AS confidence, MAP {{'a': 1.0}} AS features
            UNION ALL SELECT 'q2', TIMESTAMP '2026-01-05 10:00:00', 7.0, MAP {{'a': 1.0}})
            TO '{parquet_path}' (FORMAT parquet)"""
    )
    result = ingest_file(con, landing, parquet_path, PREDICTIONS)
    assert (result.records_read, result.accepted, result.rejected) == (2, 1, 1)
    assert count(con, "SELECT count(*) FROM raw.predictions WHERE prediction_id = 'q1'") == 1


FEEDBACK_CSV_HEADER = b"event_id,prediction_id,event_type,occurred_at,notes\r\n"


def test_csv_cells_may_span_lines_and_every_record_keeps_its_own_line_number(
    con, landing, write_landing
):
    body = (
        b"\xef\xbb\xbf"
        + FEEDBACK_CSV_HEADER  # a BOM and CRLF line ends
        + b'e1,p1,accept,2026-01-05T10:00:00Z,"first line\r\nsecond line"\r\n'  # lines 2-3
        + b"e2,p2\r\n"  # line 4: too few cells
        + b"\r\n"  # line 5: blank, not a record
        + b'e3,p3,reject,2026-01-05T10:00:00Z,"a ""quoted"", word"\r\n'  # line 6
        + b'e4,p4,undo,2026-01-05T10:00:00Z,"x\ny\nz"\r\n'  # lines 7-9
        + b"e5,p5,accept,2026-01-05T10:00:00Z,ok\r\n"  # line 10
        + b'e6,p6,accept,2026-01-05T10:00:00Z,"never closed\r\n'  # line 11: open quote
    )
    path = write_landing("feedback", "notes.csv", body)
    result = ingest_file(con, landing, path, KINDS["feedback"])
    assert (result.records_read, result.accepted, result.rejected) == (6, 4, 2)
    accepted = con.execute(
        "SELECT event_id, source_line, notes FROM raw.feedback_events ORDER BY event_id"
    ).fetchall()
    assert accepted == [
        ("e1", 2, "first line\r\nsecond line"),
        ("e3", 6, 'a "quoted", word'),
        ("e4", 7, "x\ny\nz"),
        ("e5", 10, "ok"),
    ]
    rejected = con.execute(
        "SELECT line_number, raw_text, reason FROM raw.rejected_records ORDER BY 1"
    ).fetchall()
    assert [(line, text[:5]) for line, text, _ in rejected] == [(4, "e2,p2"), (11, "e6,p6")]
    assert all(reason.startswith("unparseable CSV line") for _, _, reason in rejected)


def test_csv_header_must_name_each_column_once(con, landing, write_landing):
    path = write_landing("feedback", "twice.csv", b"event_id,notes,notes\ne1,a,b\n")
    result = ingest_file(con, landing, path, KINDS["feedback"])
    assert result.status == "unreadable"
    assert "repeated" in result.error or "once" in result.error
    assert count(con, "SELECT count(*) FROM raw.feedback_events") == 0


def test_csv_line_numbers_fall_back_to_one_record_per_line_after_a_stray_quote(
    con, landing, write_landing
):
    """A quote inside an unquoted cell unbalances the quote count; numbering stays sane."""
    body = (
        FEEDBACK_CSV_HEADER
        + b'e1,p1,accept,2026-01-05T10:00:00Z,5" screen\r\n'
        + b"e2,p2,accept,2026-01-05T10:00:00Z,ok\r\n"
        + b"e3,p3\r\n"
    )
    lines, _ = readers.csv_records(body)
    assert list(lines) == [1, 2]  # by quotes alone, e1 would swallow the lines after it
    path = write_landing("feedback", "stray.csv", body)
    result = ingest_file(con, landing, path, KINDS["feedback"])
    assert (result.records_read, result.accepted, result.rejected) == (3, 2, 1)
    assert con.execute(
        "SELECT event_id, source_line, notes FROM raw.feedback_events ORDER BY 1"
    ).fetchall() == [("e1", 2, '5" screen'), ("e2", 3, "ok")]
    assert count(con, "SELECT line_number FROM raw.rejected_records") == 4


def test_exact_repeats_are_duplicates_and_changed_content_is_a_conflict(
    con, landing, write_landing
):
    first = write_landing("predictions", "day1.jsonl", [prediction("a"), prediction("b")])
    second = write_landing(
        "predictions",
        "day2.jsonl",
        [prediction("a"), prediction("b", confidence=0.9), prediction("c"), prediction("c")],
    )
    ingest_file(con, landing, first, PREDICTIONS)
    result = ingest_file(con, landing, second, PREDICTIONS)

    assert (result.records_read, result.accepted, result.duplicates, result.rejected) == (
        4,
        1,
        2,
        1,
    )
    reason, detail = con.execute("SELECT reason, detail FROM raw.rejected_records").fetchall()[0]
    assert reason == "conflicting duplicate: prediction_id already ingested, other content"
    assert "predictions/day1.jsonl" in detail
    stored = con.execute("SELECT prediction_id, confidence FROM raw.predictions ORDER BY 1")
    assert stored.fetchall() == [("a", 0.6), ("b", 0.6), ("c", 0.6)]


def test_the_same_content_in_another_form_is_a_duplicate_not_a_conflict(
    con, landing, write_landing
):
    """Key order, 1 vs 1.0 and a time zone offset do not change what a record says; a changed
    feature value does."""
    original = prediction("a", features={"x": 1, "y": 2.5, "z": None})
    write_landing("predictions", "day1.jsonl", [original])
    ingest_kind(con, landing, "predictions")
    resent = {
        **original,
        "features": {"z": None, "y": 2.50, "x": 1.0},
        "predicted_at": "2026-01-05T12:00:00+02:00",
    }
    write_landing("predictions", "day2.jsonl", [dict(reversed(list(resent.items())))])
    changed = prediction("a", features={"x": 1, "y": 2.6, "z": None})
    write_landing("predictions", "day3.jsonl", [changed])

    results = {r.path: r for r in ingest_kind(con, landing, "predictions")}

    assert (
        results["predictions/day2.jsonl"].duplicates,
        results["predictions/day2.jsonl"].rejected,
    ) == (1, 0)
    assert (
        results["predictions/day3.jsonl"].duplicates,
        results["predictions/day3.jsonl"].rejected,
    ) == (0, 1)


def test_accounting_invariant_holds_for_every_file(con, landing, write_landing):
    write_landing("predictions", "a.jsonl", [prediction("a"), prediction("a"), "{", "[1]"])
    write_landing("predictions", "b.jsonl", [prediction("a", confidence=0.1), prediction("z")])
    write_landing("predictions", "c.txt", [prediction("q")])
    results = ingest_kind(con, landing, "predictions")
    for result in results:
        assert result.records_read == result.accepted + result.duplicates + result.rejected
    assert reporting.accounting_violations(con, "predictions").empty
    assert manifest(con, "predictions/a.jsonl") == ("ingested", 4, 1, 1, 2)
    assert manifest(con, "predictions/b.jsonl") == ("ingested", 2, 1, 0, 1)


def test_accounting_check_detects_rows_that_went_missing(con, landing, write_landing):
    write_landing("predictions", "a.jsonl", [prediction("a"), prediction("b")])
    ingest_kind(con, landing, "predictions")
    con.execute("DELETE FROM raw.predictions WHERE prediction_id = 'b'")
    violations = reporting.accounting_violations(con, "predictions")
    assert violations["path"].tolist() == ["predictions/a.jsonl"]


def test_rerun_adds_nothing(con, landing, write_landing):
    write_landing("predictions", "a.jsonl", [prediction("a"), "{"])
    write_landing("predictions", "x.txt", b"junk")
    first = ingest_kind(con, landing, "predictions")
    tables = ("raw.predictions", "raw.rejected_records", "raw.ingested_files")
    before = [count(con, f"SELECT count(*) FROM {t}") for t in tables]

    second = ingest_kind(con, landing, "predictions")

    assert [r.status for r in first] == ["ingested", "unsupported"]
    assert [r.status for r in second] == ["skipped", "skipped"]
    assert [count(con, f"SELECT count(*) FROM {t}") for t in tables] == before


def test_a_changed_file_is_ingested_again_and_repeats_count_as_duplicates(
    con, landing, write_landing
):
    write_landing("predictions", "a.jsonl", [prediction("a")])
    ingest_kind(con, landing, "predictions")
    write_landing("predictions", "a.jsonl", [prediction("a"), prediction("b")])
    (result,) = ingest_kind(con, landing, "predictions")
    assert (result.status, result.accepted, result.duplicates) == ("ingested", 1, 1)
    assert count(con, "SELECT count(*) FROM raw.predictions") == 2
    assert reporting.accounting_violations(con, "predictions").empty


def test_failure_halfway_through_a_batch_leaves_nothing_and_rerun_completes(
    con, landing, write_landing, monkeypatch
):
    write_landing("predictions", "a.jsonl", [prediction(f"p{i}") for i in range(50)] + ["{"])
    write_landing("predictions", "b.jsonl", [prediction(f"q{i}") for i in range(20)])

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    # Accepted and rejected rows are already inserted when the manifest is written.
    monkeypatch.setattr(ingestion, "write_manifest", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_kind(con, landing, "predictions")
    for table in ("raw.predictions", "raw.rejected_records", "raw.ingested_files"):
        assert count(con, f"SELECT count(*) FROM {table}") == 0

    monkeypatch.undo()
    first, second = ingest_kind(con, landing, "predictions")
    assert (first.accepted, first.rejected, second.accepted) == (50, 1, 20)
    assert count(con, "SELECT count(*) FROM raw.predictions") == 70
    assert reporting.accounting_violations(con, "predictions").empty


def test_orphan_feedback_is_kept_and_counted_until_its_prediction_lands(
    con, landing, write_landing
):
    write_landing("feedback", "f.jsonl", [feedback("e1", "late", "reject", "2026-01-05T12:00:00Z")])
    ingest_kind(con, landing, "feedback")
    assert count(con, "SELECT count(*) FROM raw.feedback_events") == 1
    from feedback_pipeline.labels.outcomes import orphan_feedback_count

    assert orphan_feedback_count(con) == 1
    write_landing("predictions", "p.jsonl", [prediction("late")])
    ingest_kind(con, landing, "predictions")
    assert orphan_feedback_count(con) == 0


def test_split_lines_numbers_every_line_and_skips_blank_ones():
    table = readers.split_lines(b"a\n\nb\r\n\r\nc")
    assert table.column("line_no").to_pylist() == [1, 3, 5]
    assert table.column("line").to_pylist() == [b"a\n", b"b\r\n", b"c"]
    assert readers.split_lines(b"").num_rows == 0
    assert readers.split_lines(b"\xef\xbb\xbfx\n").column("line").to_pylist() == [b"x\n"]
    # A last line without a newline that starts with a CR is a record, not a blank line.
    assert readers.split_lines(b"a\n\r5").column("line").to_pylist() == [b"a\n", b"\r5"]


def test_repeated_ids_are_detected(con, landing, write_landing):
    write_landing("predictions", "a.jsonl", [prediction("a"), prediction("b")])
    ingest_kind(con, landing, "predictions")
    assert reporting.repeated_ids(con, "predictions") == 0
    con.execute(
        "INSERT INTO raw.predictions SELECT * FROM raw.predictions WHERE prediction_id = 'a'"
    )
    assert reporting.repeated_ids(con, "predictions") == 1


def test_a_batch_of_files_classifies_across_files_like_one_file_at_a_time(
    con, landing, write_landing
):
    """Files validated together still get per-file verdicts, in file order."""
    write_landing("predictions", "1.jsonl", [prediction("a"), prediction("b")])
    write_landing(
        "predictions",
        "2.jsonl",
        [prediction("a"), prediction("b", confidence=0.9), prediction("c")],
    )
    write_landing(
        "predictions",
        "3.csv",
        b"prediction_id,predicted_at,confidence,features\n"
        b'c,2026-01-05T10:00:00Z,0.6,"{""momentum"": 0.5, ""volatility"": -1.0}"\n',
    )
    results = ingest_kind(con, landing, "predictions")
    assert [(r.accepted, r.duplicates, r.rejected) for r in results] == [
        (2, 0, 0),
        (1, 1, 1),
        (0, 0, 1),
    ]
    details = con.execute(
        "SELECT source_file, detail FROM raw.rejected_records ORDER BY source_file"
    ).fetchall()
    assert details == [
        ("predictions/2.jsonl", "prediction_id b was ingested from predictions/1.jsonl"),
        ("predictions/3.csv", "prediction_id c was ingested from predictions/2.jsonl"),
    ]
    assert reporting.accounting_violations(con, "predictions").empty


def test_small_batches_give_the_same_result_as_one_batch(con, data_dir, landing, write_landing):
    for day in range(4):
        write_landing(
            "predictions",
            f"{day}.jsonl",
            [prediction(f"p{i}", confidence=0.1 * day) for i in range(day, day + 3)],
        )
    paths = ingestion.landing_files(landing, "predictions")
    one_at_a_time = ingestion.ingest_files(con, landing, paths, PREDICTIONS, batch_bytes=1)
    stored = con.execute("SELECT prediction_id, confidence FROM raw.predictions ORDER BY 1")
    expected = stored.fetchall()
    con.execute(
        "DELETE FROM raw.predictions; DELETE FROM raw.rejected_records; "
        "DELETE FROM raw.ingested_files"
    )
    together = ingestion.ingest_files(con, landing, paths, PREDICTIONS)
    assert together == one_at_a_time
    assert (
        con.execute("SELECT prediction_id, confidence FROM raw.predictions ORDER BY 1").fetchall()
        == expected
    )


def test_a_rerun_does_not_read_unchanged_files_and_a_touched_file_is_skipped(
    con, landing, write_landing, monkeypatch
):
    write_landing("predictions", "a.jsonl", [prediction("a")])
    write_landing("predictions", "b.jsonl", [prediction("b")])
    ingest_kind(con, landing, "predictions")

    reads = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or original(self))
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"] * 2
    assert reads == []

    (landing / "predictions" / "b.jsonl").touch()  # new mtime, same content
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"] * 2
    assert reads == ["b.jsonl"]
