"""Every rule of the data contract, table-driven, on a real DuckDB file."""

from __future__ import annotations

import pytest

from feedback_pipeline.ingest.landing_files import ingest_file
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline_tests.conftest import baseline, feedback, prediction

AT = "2026-01-05T12:00:00Z"

CASES = [
    # (kind, bad record (dict or raw line), expected reason)
    ("predictions", prediction("x", prediction_id=...), "missing required field prediction_id"),
    ("predictions", prediction(""), "missing required field prediction_id"),
    ("predictions", prediction(17), "prediction_id must be a string"),
    ("predictions", prediction("x", predicted_at=...), "missing required field predicted_at"),
    (
        "predictions",
        prediction("x", predicted_at="yesterday"),
        "predicted_at must be an ISO-8601 timestamp",
    ),
    (
        "predictions",
        prediction("x", predicted_at=1767600000),
        "predicted_at must be an ISO-8601 timestamp",
    ),
    ("predictions", prediction("x", confidence=...), "missing required field confidence"),
    ("predictions", prediction("x", confidence=1.2), "confidence out of range [0, 1]"),
    ("predictions", prediction("x", confidence=-0.1), "confidence out of range [0, 1]"),
    ("predictions", prediction("x", confidence="0.5"), "confidence must be a number"),
    (
        "predictions",
        '{"prediction_id": "x", "predicted_at": "2026-01-05", "confidence": NaN, '
        '"features": {"a": 1}}',
        "confidence must be a finite number",
    ),
    ("predictions", prediction("x", features=...), "missing required field features"),
    (
        "predictions",
        prediction("x", features=[1, 2]),
        "features must be an object of name -> number or null",
    ),
    ("predictions", prediction("x", features={}), "features must not be empty"),
    (
        "predictions",
        prediction("x", features={"a": "high"}),
        "features values must be numbers or null",
    ),
    (
        "predictions",
        prediction("x", features={"a": True}),
        "features values must be numbers or null",
    ),
    (
        "predictions",
        prediction("x", features={"a": {"b": 1}}),
        "features values must be numbers or null",
    ),
    (
        "predictions",
        '{"prediction_id": "x", "predicted_at": "2026-01-05", "confidence": 0.5, '
        '"features": {"a": Infinity}}',
        "features values must be finite (no NaN or Infinity)",
    ),
    (
        "predictions",
        '{"prediction_id": "x", "predicted_at": "2026-01-05", "confidence": 0.5, '
        '"features": {"a": 1e999}}',
        "features values must be finite (no NaN or Infinity)",
    ),
    ("predictions", prediction("x", environment="staging"), "environment must be one of prod, dev"),
    ("predictions", prediction("x", rule_confidence=3), "rule_confidence out of range [0, 1]"),
    ("predictions", prediction("x", ml_enhanced="yes"), "ml_enhanced must be true or false"),
    ("predictions", "[1, 2, 3]", "record is not a JSON object"),
    ("predictions", '{"prediction_id": "x", ', "malformed JSON"),
    ("predictions", b'{"prediction_id": "caf\xe9"}', "invalid UTF-8"),
    (
        "feedback",
        feedback("e", "p", "like", AT),
        "event_type must be one of accept, reject, undo, modify, export, outcome, rate",
    ),
    ("feedback", feedback("e", ..., "accept", AT), "missing required field prediction_id"),
    ("feedback", feedback("e", "p", "accept", ...), "missing required field occurred_at"),
    (
        "feedback",
        feedback("e", "p", "outcome", AT),
        "outcome is required when event_type is 'outcome'",
    ),
    (
        "feedback",
        feedback("e", "p", "accept", AT, outcome="win"),
        "outcome is only allowed when event_type is 'outcome'",
    ),
    (
        "feedback",
        feedback("e", "p", "outcome", AT, outcome="jackpot"),
        "outcome must be one of win, loss, breakeven",
    ),
    (
        "feedback",
        feedback("e", "p", "outcome", AT, outcome="win", return_pct="big"),
        "return_pct must be a number",
    ),
    (
        "feedback",
        feedback("e", "p", "modify", AT, modified_value=[1]),
        "modified_value must be a number",
    ),
    ("feedback", feedback("e", "p", "rate", AT), "rating is required when event_type is 'rate'"),
    ("feedback", feedback("e", "p", "rate", AT, rating=6), "rating out of range [1, 5]"),
    ("feedback", feedback("e", "p", "rate", AT, rating=4.5), "rating must be a whole number"),
    ("feedback", feedback("e", "p", "rate", AT, rating="4"), "rating must be a whole number"),
    (
        "feedback",
        feedback("e", "p", "accept", AT, rating=5),
        "rating is only allowed when event_type is 'rate'",
    ),
    ("predictions", prediction("x", variant=7), "variant must be a string"),
    (
        "feedback",
        feedback("e", "p", "accept", AT, environment="qa"),
        "environment must be one of prod, dev",
    ),
    ("baseline", baseline("b", label=2), "label must be 0 or 1"),
    ("baseline", baseline("b", label=0.5), "label must be 0 or 1"),
    ("baseline", baseline("b", label="1"), "label must be 0 or 1"),
    ("baseline", baseline("b", as_of=...), "missing required field as_of"),
    ("baseline", baseline("b", features=...), "missing required field features"),
]

GOOD = {
    "predictions": prediction("good"),
    "feedback": feedback("good", "p", "outcome", AT, outcome="win", return_pct=1.5),
    "baseline": baseline("good"),
}


@pytest.mark.parametrize(("kind", "bad", "reason"), CASES, ids=lambda v: str(v)[:40])
def test_bad_record_is_rejected_with_its_reason_and_good_record_lands(
    con, landing, write_landing, kind, bad, reason
):
    path = write_landing(kind, "batch.jsonl", [GOOD[kind], bad])
    spec = KINDS[kind]

    result = ingest_file(con, landing, path, spec)

    assert (result.records_read, result.accepted, result.rejected) == (2, 1, 1)
    rejected = con.execute(
        "SELECT kind, source_file, line_number, reason, raw_text FROM raw.rejected_records"
    ).fetchall()
    assert len(rejected) == 1
    assert rejected[0][:4] == (kind, f"{kind}/batch.jsonl", 2, reason)
    assert rejected[0][4]  # the raw text is kept
    stored = con.execute(f"SELECT {spec.id_field} FROM {spec.table}").fetchall()
    assert stored == [("good",)]


@pytest.mark.parametrize(
    ("timestamp", "expected_utc"),
    [
        ("2026-01-05T10:00:00", "2026-01-05 10:00:00"),  # no zone means UTC
        ("2026-01-05T10:00:00Z", "2026-01-05 10:00:00"),
        ("2026-01-05T12:00:00+02:00", "2026-01-05 10:00:00"),
        ("2026-01-05 05:00:00-05:00", "2026-01-05 10:00:00"),
    ],
)
def test_timestamps_are_normalised_to_utc(con, landing, write_landing, timestamp, expected_utc):
    path = write_landing("predictions", "p.jsonl", [prediction("p", predicted_at=timestamp)])
    ingest_file(con, landing, path, KINDS["predictions"])
    stored = con.execute("SELECT strftime(predicted_at, '%Y-%m-%d %H:%M:%S') FROM raw.predictions")
    assert stored.fetchall() == [(expected_utc,)]


def test_optional_fields_default_and_null_features_are_kept(con, landing, write_landing):
    record = prediction("p", environment=..., features={"a": None, "b": 2})
    ingest_file(
        con, landing, write_landing("predictions", "p.jsonl", [record]), KINDS["predictions"]
    )
    environment, features = con.execute(
        "SELECT environment, features->>'$.b' FROM raw.predictions"
    ).fetchall()[0]
    assert environment == "prod"
    assert features == "2"
