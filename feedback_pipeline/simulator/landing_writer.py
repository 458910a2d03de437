"""How the simulator's records become landing files: each kind rendered as JSON, CSV or
Parquet set-based by DuckDB, with the bad records and broken files a real feed has (merge
patches that break one rule each, conflicting repeats, text-level corruptions)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.warehouse.schema import KINDS

# The simulated model's features, in the order the world's weights use them.
FEATURES = (
    "momentum",
    "volatility",
    "volume_z",
    "spread",
    "rsi",
    "sentiment",
    "gap",
    "trend",
)

# Record-level corruptions as JSON merge patches (RFC 7396: null removes a key).
BAD_PATCHES: dict[str, list[tuple[str, str]]] = {
    "predictions": [
        ("missing_id", '{"prediction_id": null}'),
        ("confidence_out_of_range", '{"confidence": 1.7}'),
        ("bad_timestamp", '{"predicted_at": "last tuesday"}'),
        ("bad_environment", '{"environment": "staging"}'),
        ("feature_not_number", '{"features": {"momentum": "high"}}'),
        ("features_not_object", '{"features": "none"}'),
        ("confidence_as_text", '{"confidence": "0.5"}'),
    ],
    "feedback": [
        ("missing_prediction_id", '{"prediction_id": null}'),
        ("unknown_event_type", '{"event_type": "like"}'),
        ("outcome_without_result", '{"event_type": "outcome", "outcome": null}'),
        ("bad_timestamp", '{"occurred_at": "2026-13-45T99:00:00"}'),
        ("bad_outcome", '{"event_type": "outcome", "outcome": "jackpot"}'),
    ],
    "baseline": [
        ("label_not_binary", '{"label": 2}'),
        ("missing_features", '{"features": null}'),
        ("bad_timestamp", '{"as_of": "soon"}'),
    ],
}
CONFLICT_PATCH = {
    "predictions": '{"confidence": 0.123}',
    "feedback": '{"notes": "edited after the fact"}',
    "baseline": '{"source": "relabeled"}',
}
# Text-level corruptions, one per jsonl file in rotation (only when bad_rate > 0).
TEXT_CORRUPTIONS = ("nan_token", "invalid_utf8", "truncated_last_line", "crlf", "none")


FEATURES_SQL = "struct_pack(" + ", ".join(f"{f} := {f}" for f in FEATURES) + ")"

RENDER_SQL = {
    "predictions": f"""
        SELECT prediction_id AS id, late,
               to_json(struct_pack(
                   prediction_id := prediction_id,
                   predicted_at := strftime(predicted_at, '%Y-%m-%dT%H:%M:%S') || zone_suffix,
                   confidence := confidence,
                   features := {FEATURES_SQL},
                   entity_id := 'T' || lpad(entity::VARCHAR, 3, '0'),
                   model_version := model_version,
                   environment := environment,
                   rule_confidence := rule_confidence,
                   ml_enhanced := ml_enhanced,
                   variant := variant
               ))::VARCHAR AS record
        FROM frame ORDER BY seq""",
    "feedback": """
        SELECT event_id AS id, false AS late,
               to_json(struct_pack(
                   event_id := event_id, prediction_id := prediction_id, event_type := event_type,
                   occurred_at := strftime(occurred_at, '%Y-%m-%dT%H:%M:%SZ'),
                   outcome := outcome, return_pct := return_pct,
                   modified_value := modified_value, environment := environment,
                   source := source, rating := rating::INTEGER, notes := notes
               ))::VARCHAR AS record
        FROM frame ORDER BY occurred_at, event_id""",
    "baseline": f"""
        SELECT example_id AS id, false AS late,
               to_json(struct_pack(
                   example_id := example_id,
                   as_of := strftime(as_of, '%Y-%m-%dT%H:%M:%SZ'),
                   label := label, features := {FEATURES_SQL},
                   entity_id := 'T' || lpad(entity::VARCHAR, 3, '0'),
                   source := 'forward_returns'
               ))::VARCHAR AS record
        FROM frame ORDER BY seq""",
}


def render_records(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    frame: pd.DataFrame,
    rng: np.random.Generator,
    bad_rate: float,
) -> tuple[pd.DataFrame, int]:
    """JSON text per record, with ``bad_rate`` of them corrupted, duplicated or conflicting."""
    con.register("frame", frame)
    rendered = con.sql(RENDER_SQL[kind]).df()
    con.unregister("frame")
    n = len(rendered)
    patches = BAD_PATCHES[kind]
    bad_kind = np.where(rng.random(n) < bad_rate, rng.integers(0, len(patches) + 2, n), -1)
    rendered["patch"] = None
    patched = (bad_kind >= 0) & (bad_kind < len(patches))
    patch_texts = np.array([p for _, p in patches], dtype=object)
    rendered.loc[patched, "patch"] = patch_texts[bad_kind[patched]]
    con.register("rendered", rendered)
    records = con.sql(
        "SELECT id, late, CASE WHEN patch IS NULL THEN record "
        "ELSE json_merge_patch(record, patch)::VARCHAR END AS record FROM rendered"
    ).df()
    con.unregister("rendered")
    duplicate = records[bad_kind == len(patches)]
    conflict = records[bad_kind == len(patches) + 1].copy()
    if len(conflict):
        con.register("conflict", conflict)
        conflict = con.sql(
            f"SELECT id, late, json_merge_patch(record, '{CONFLICT_PATCH[kind]}')::VARCHAR "
            "AS record FROM conflict"
        ).df()
        con.unregister("conflict")
    out = pd.concat([records, duplicate, conflict], ignore_index=True)
    return out, int(patched.sum() + len(duplicate) + len(conflict))


NAN_FIELD = {"predictions": "confidence", "feedback": "return_pct", "baseline": "label"}


def _nan_token_line(kind: str, template: str) -> str:
    """A copy of one record with a fresh id and a bare ``NaN`` token in a numeric field."""
    record = json.loads(template)
    id_field = KINDS[kind].id_field
    record[id_field] = f"{record.get(id_field)}-nan"
    record[NAN_FIELD[kind]] = float("nan")
    return json.dumps(record)  # json.dumps writes NaN as the bare token


def write_jsonl(path: Path, kind: str, records: pd.Series, corruption: str) -> int:
    """Write JSON lines, applying one text-level corruption; returns extra bad lines added."""
    lines = records.tolist()
    extra = 0
    if corruption == "nan_token" and lines:
        lines.insert(len(lines) // 2, _nan_token_line(kind, lines[0]))
        extra = 1
    newline = "\r\n" if corruption == "crlf" else "\n"
    body = newline.join(lines).encode("utf-8") + (newline.encode() if lines else b"")
    if corruption == "invalid_utf8" and lines:
        body += b'{"id": "broken \xff\xfe encoding"}\n'
        extra = 1
    if corruption == "truncated_last_line" and lines:
        body += lines[-1].encode("utf-8")[: max(len(lines[-1]) // 2, 1)]
        extra = 1
    path.write_bytes(body)
    return extra


# Parquet column types by contract field type (features are a MAP, written separately).
PARQUET_TYPES = {
    "string": "VARCHAR",
    "enum": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "number": "DOUBLE",
    "bool": "BOOLEAN",
    "label": "INTEGER",
    "integer": "INTEGER",
}


def write_table(
    con: duckdb.DuckDBPyConnection, path: Path, records: pd.Series, fmt: str, kind: str
) -> None:
    """CSV (features as JSON text) or parquet (typed columns) from the JSON records."""
    con.register("records", pd.DataFrame({"record": records}))
    fields = KINDS[kind].fields  # the contract's own field list and types
    if fmt == "csv":
        columns = ", ".join(
            f"(record->'$.{f.name}')::VARCHAR AS {f.name}"
            if f.type == "features"
            else f"record->>'$.{f.name}' AS {f.name}"
            for f in fields
        )
        con.execute(f"COPY (SELECT {columns} FROM records) TO '{path}' (FORMAT csv, HEADER)")
    else:
        columns = ", ".join(
            f"TRY_CAST(record->'$.{f.name}' AS MAP(VARCHAR, DOUBLE)) AS {f.name}"
            if f.type == "features"
            else f"TRY_CAST(record->>'$.{f.name}' AS {PARQUET_TYPES[f.type]}) AS {f.name}"
            for f in fields
        )
        con.execute(f"COPY (SELECT {columns} FROM records) TO '{path}' (FORMAT parquet)")
    con.unregister("records")
