"""The rows of a request, checked column by column as the landing contract will check them (so
a served row never becomes a rejected record), and the rows of the answer as
``mlflow models serve`` gives them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feedback_pipeline.served_policy import OUTPUT_COLUMNS
from feedback_pipeline.serving.server.protocol import (
    PASS_THROUGH,
    RULE_CONFIDENCE,
    BadRequest,
    Table,
)
from feedback_pipeline.vocabulary import ENVIRONMENTS


def parse_float_column(table: Table, column: str) -> np.ndarray:
    """A column as float64 (absent or null: NaN); a value that is not a number (a string that
    does not read as one, "NaN" included, an object, a list) is a 400."""
    if column not in table:
        return np.full(table.rows, np.nan)
    raw = table.columns[column]
    try:
        parsed = raw.astype("float64")  # None -> NaN; numbers and numeric strings as float()
    except (TypeError, ValueError, OverflowError):
        parsed = None
    if parsed is not None:
        not_a_number = np.isnan(parsed)
        if not not_a_number.any() or pd.isna(raw[not_a_number]).all():
            return parsed
    for row, value in enumerate(raw):  # only on the way to a 400: find the row to name
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue  # null (or JSON's NaN literal): missing
        try:
            valid = not np.isnan(float(value))
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise BadRequest(
                f"column {column!r} must hold numbers or null; row {row} holds {value!r:.200}"
            )
    raise BadRequest(f"column {column!r} must hold numbers or null")


def optional(table: Table, column: str, kinds: tuple[str, ...], what: str) -> np.ndarray:
    """An optional column as an object array, null as None (absent: all None); a value of
    another JSON type (``pandas.api.types.infer_dtype`` not in ``kinds``) is a 400."""
    if column not in table:
        return np.full(table.rows, None, dtype=object)
    values = table.columns[column].copy()
    if pd.api.types.infer_dtype(values, skipna=True) not in (*kinds, "empty"):
        raise BadRequest(f"column {column!r} must hold {what} or null")
    values[pd.isna(values)] = None
    return values


def texts(table: Table, column: str) -> np.ndarray:
    return optional(table, column, ("string",), "strings")


def sent_numbers(table: Table) -> tuple[str, ...]:
    """The numeric columns the caller sent besides the pass-through fields and
    ``rule_confidence``: what is recorded as features when no model is loaded."""
    return tuple(
        name
        for name, values in table.columns.items()
        if name not in PASS_THROUGH
        and name != RULE_CONFIDENCE
        and pd.api.types.infer_dtype(values, skipna=True)
        in ("floating", "integer", "mixed-integer-float")
    )


def new_ids(count: int) -> np.ndarray:
    """``count`` uuid4 hex strings at once: random bytes with the version and variant bits."""
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return np.frombuffer(raw.tobytes().hex().encode(), dtype="S32").astype(str)


@dataclass(frozen=True)
class Rows:
    """A request's pass-through fields and ``rule_confidence``, one array each, checked as the
    landing contract will check them (so a served row never becomes a rejected record)."""

    ids: np.ndarray
    entity_id: np.ndarray
    environment: np.ndarray
    variant: np.ndarray
    ml_enhanced: np.ndarray
    rule_confidence: np.ndarray


def checked_rows(table: Table, environment: str) -> Rows:
    ids = texts(table, "prediction_id")
    missing = (ids == None) | (ids == "")  # noqa: E711 - elementwise on an object array
    if missing.any():
        ids[missing] = new_ids(int(missing.sum()))
    if len(pd.unique(ids)) != len(ids):
        repeated = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise BadRequest(f"prediction_id repeats within the request: {repeated!r}")
    env = texts(table, "environment")
    env[env == None] = environment  # noqa: E711
    allowed = np.isin(env, ENVIRONMENTS)
    if not allowed.all():
        bad = env[~allowed][0]
        raise BadRequest(f"environment must be one of {', '.join(ENVIRONMENTS)}, not {bad!r}")
    ml = optional(table, "ml_enhanced", ("boolean",), "true, false")
    rule = parse_float_column(table, RULE_CONFIDENCE)
    with np.errstate(invalid="ignore"):
        out_of_range = ~np.isnan(rule) & ((rule < 0.0) | (rule > 1.0))
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise BadRequest(f"rule_confidence must be within [0, 1]; row {row} holds {rule[row]}")
    return Rows(ids, texts(table, "entity_id"), env, texts(table, "variant"), ml, rule)


def _json_values(values: np.ndarray) -> list:
    """A column as JSON-ready Python values, NaN as None (JSON null)."""
    if values.dtype.kind == "f":
        nulls = np.isnan(values)
        if nulls.any():
            values = values.astype(object)
            values[nulls] = None
    return values.tolist()


def predictions_json(ids: np.ndarray, version: str | None, served: dict[str, np.ndarray]) -> bytes:
    """``{"predictions": [row, ...]}`` as ``mlflow models serve`` answers for a DataFrame:
    one object per row with its id, the version that served it and the served columns."""
    columns = {
        "prediction_id": ids.tolist(),
        "model_version": [version] * len(ids),
        **{name: _json_values(np.asarray(served[name])) for name in OUTPUT_COLUMNS},
    }
    names = list(columns)
    records = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    return json.dumps({"predictions": records}, allow_nan=False, separators=(",", ":")).encode()
