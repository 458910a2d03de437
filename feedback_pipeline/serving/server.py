"""``feedback-pipeline serve``: the champion behind /predict, /health and /metrics (DESIGN 14).

A small FastAPI + uvicorn server (the stack MLflow's own scoring server uses) that accepts
MLflow's scoring JSON, so clients of ``mlflow models serve`` work unchanged, and adds what that
server lacks: it follows the ``champion`` alias and the active serving policy without a restart,
falls back to the caller's ``rule_confidence`` when the model cannot score (or cannot be
loaded), exports Prometheus metrics, and writes every served row back to the landing zone as a
contract prediction record, so served predictions meet their feedback and the loop closes.

Faults must not become memory blow-ups or training data: the body is refused (413) past
``--max-body-bytes`` before it is read into memory, a request past ``--max-rows`` is refused, JSON
nested past ``--max-depth`` is a 400 found by a vectorised byte scan (never a RecursionError),
rows of requests marked ``X-Feedback-Test`` are not written back, the write-back buffer is capped
(``--max-buffered-rows``) and the request logs are pruned by age and size. The champion loads in
the background: the port binds at once even when MLflow does not answer.

One uvicorn worker; scoring runs on the event loop's thread with native thread pools limited to
one thread (OpenMP oversubscription on 2 cores took a single-row p99 from ~1.4 ms to ~900 ms).
It never imports dagster or ``feedback_pipeline.defs`` (an import-linter contract).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.exceptions import MlflowException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import ClientDisconnect
from threadpoolctl import threadpool_limits

from feedback_pipeline.registry.mlflow_registry import (
    CHAMPION,
    MODEL_NAME,
    Registry,
    default_tracking_uri,
)
from feedback_pipeline.registry.served_policy import OUTPUT_COLUMNS
from feedback_pipeline.vocabulary import ENVIRONMENTS

log = logging.getLogger(__name__)

# MLflow's scoring formats (mlflow.pyfunc.scoring_server): exactly one per request.
DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS = (
    "dataframe_split",
    "dataframe_records",
    "instances",
    "inputs",
)
INPUT_FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
RULE_CONFIDENCE = "rule_confidence"
# Per-row fields that are not model input: carried into the landing record as they came.
PASS_THROUGH = ("prediction_id", "entity_id", "environment", "variant", "ml_enhanced")
# The prediction contract's field order (ingest/contract.py PREDICTIONS), features spliced in.
RECORD_FIELDS = (
    "prediction_id",
    "predicted_at",
    "confidence",
    "entity_id",
    "environment",
    "model_version",
    "rule_confidence",
    "ml_enhanced",
    "variant",
)
# 0.5 ms .. 1 s: a single row is answered in ~1 ms, a 1,000-row batch in tens of ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
ERROR_KINDS = ("bad_request", "too_large", "predict", "reload", "write", "internal")
# A request with this header set to 1/true is a test: answered, logged and counted, not landed.
TEST_HEADER = "x-feedback-test"
TEST_VALUES = ("1", "true")
# The shallowest nesting MLflow's formats need: {"dataframe_split": {"data": [[...]]}}.
MIN_DEPTH = 4
# Bytes per step of the nesting scan: its int32 temporaries stay a few MB for any body.
SCAN_CHUNK = 1 << 18
# How often the request logs are pruned (and once when the server starts).
PRUNE_SECONDS = 60.0
# How long shutdown waits for a registry call in flight (MLflow may retry for minutes).
RELOAD_JOIN_SECONDS = 2.0
MIB = 1 << 20
# MLflow error codes that mean the caller's params were wrong, not that the model failed.
CLIENT_ERROR_CODES = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


@dataclass(frozen=True)
class ServerConfig:
    """What ``feedback-pipeline serve`` runs; the tracking URI is ``$MLFLOW_TRACKING_URI``,
    else the data directory's sqlite registry (``default_tracking_uri``)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    model_name: str = MODEL_NAME
    alias: str = CHAMPION
    reload_interval_seconds: float = 10.0
    flush_rows: int = 1000
    flush_seconds: float = 5.0
    environment: str = "prod"
    max_body_bytes: int = 8 * MIB  # 10,000 rows of ten features take about 2 MB
    max_rows: int = 10_000
    max_depth: int = 32
    max_buffered_rows: int = 100_000  # served rows held for the write-back (disk full: capped)
    log_retention_days: int = 30
    log_retention_bytes: int = 1024 * MIB

    def __post_init__(self) -> None:
        """Refuse settings the server would trip on later, with the reason, at startup."""
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {ENVIRONMENTS}, not {self.environment!r}")
        if self.flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, not {self.flush_rows}")
        if not (self.flush_seconds > 0 and self.reload_interval_seconds > 0):
            raise ValueError("flush_seconds and reload_interval_seconds must be positive")
        for name in ("max_body_bytes", "max_rows", "log_retention_days", "log_retention_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_depth < MIN_DEPTH:
            raise ValueError(
                f"max_depth must be at least {MIN_DEPTH} (MLflow's dataframe_split nests that "
                f"deep), not {self.max_depth}"
            )
        if self.max_buffered_rows < max(self.flush_rows, self.max_rows):
            raise ValueError(
                f"max_buffered_rows ({self.max_buffered_rows}) must be at least flush_rows "
                f"({self.flush_rows}) and max_rows ({self.max_rows}): a smaller cap would drop "
                "rows while the disk is fine"
            )

    @property
    def tracking_uri(self) -> str:
        return default_tracking_uri(self.data_dir)

    @property
    def predictions_dir(self) -> Path:
        return self.data_dir / "landing" / "predictions"

    @property
    def requests_dir(self) -> Path:
        return self.data_dir / "serving"


class BadRequest(Exception):
    """The caller's request cannot be scored as sent: answered with ``status`` and the reason,
    counted as error ``kind``."""

    code = "BAD_REQUEST"
    kind = "bad_request"

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status

    def payload(self) -> dict:
        return {"error_code": self.code, "message": self.message}


class TooLarge(BadRequest):
    """Over a size limit (413): the answer names the limit and the option that sets it, so a
    client can split its batch and an operator can raise the limit."""

    code = "REQUEST_TOO_LARGE"
    kind = "too_large"

    def __init__(self, message: str, limit: int, unit: str, option: str):
        super().__init__(f"{message}; the limit is {limit:,} {unit} ({option})", status=413)
        self.limit = limit
        self.option = option

    def payload(self) -> dict:
        return {**super().payload(), "limit": self.limit, "option": self.option}


def utc_iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as the landing contract and the request log expect."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------
# Parsing: MLflow's scoring JSON (and CSV) to named columns, with a message for every bad shape.


@dataclass(frozen=True)
class Table:
    """A request's rows: each named column as an object array of the values the body held
    (None or NaN where null). The JSON parser has already made one Python object per value, so
    arranging them in columns is all that is left; a DataFrame per request cost more than
    scoring a row."""

    columns: dict[str, np.ndarray]
    rows: int

    def __contains__(self, name: object) -> bool:
        return name in self.columns


def json_depth(body: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in JSON text, brackets inside strings not
    counted (a quote after an odd run of backslashes is escaped). Vectorised over chunks of
    ``SCAN_CHUNK`` bytes, carrying the depth, the in-string state and a trailing backslash run
    across chunks; stops early once the depth passes ``stop_above``."""
    data = np.frombuffer(body, dtype=np.uint8)
    depth = deepest = in_string = slashes = 0
    for start in range(0, data.size, SCAN_CHUNK):
        chunk = data[start : start + SCAN_CHUNK]
        index = np.arange(chunk.size, dtype=np.int32)
        backslash = chunk == 0x5C
        last_other = np.maximum.accumulate(np.where(backslash, np.int32(-1), index))
        before = np.empty(chunk.size, dtype=np.int32)  # backslashes right before each byte
        before[0] = slashes
        before[1:] = index[:-1] - last_other[:-1] + np.where(last_other[:-1] < 0, slashes, 0)
        quotes = np.cumsum((chunk == 0x22) & (before % 2 == 0), dtype=np.int32)
        outside = (quotes + in_string) % 2 == 0
        opens = (chunk == 0x5B) | (chunk == 0x7B)
        closes = (chunk == 0x5D) | (chunk == 0x7D)
        step = (opens & outside).astype(np.int32) - (closes & outside).astype(np.int32)
        levels = np.cumsum(step, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        if stop_above is not None and deepest > stop_above:
            return deepest
        depth = int(levels[-1])
        in_string = int((in_string + int(quotes[-1])) % 2)
        run = chunk.size - 1 - int(last_other[-1])
        slashes = run + (slashes if last_other[-1] < 0 else 0)
    return deepest


def check_depth(body: bytes, limit: int) -> None:
    """A 400 for JSON nested deeper than ``limit``, before ``json.loads`` recurses into it. A
    body with at most ``limit`` brackets cannot be deeper: a single row skips the scan."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    depth = json_depth(body, stop_above=limit)
    if depth > limit:
        raise BadRequest(
            f"the JSON nests deeper than the limit of {limit} levels (--max-depth); MLflow's "
            f"scoring formats need {MIN_DEPTH}"
        )


def _row_count(fmt: str, data: Any) -> int:
    """How many rows a format's payload holds, without looking at them (shape errors are
    found later)."""
    if fmt == DF_SPLIT:
        rows = data.get("data") if isinstance(data, dict) else None
        return len(rows) if isinstance(rows, list) else 0
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        return max((len(v) if isinstance(v, list) else 1 for v in data.values()), default=0)
    return 0


def check_rows(rows: int, limit: int | None) -> None:
    if limit is not None and rows > limit:
        raise TooLarge(
            f"the request holds {rows:,} rows; send them in several requests",
            limit,
            "rows per request",
            "--max-rows",
        )


def parse_request(
    body: bytes,
    content_type: str | None,
    max_rows: int | None = None,
    max_depth: int | None = None,
) -> tuple[Table, dict | None]:
    """The rows and ``params`` of a scoring request; BadRequest says what is wrong, TooLarge
    (413) that it holds more than ``max_rows`` rows."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "text/csv":
        try:
            frame = pd.read_csv(io.BytesIO(body))
        except Exception as error:  # pandas raises many types for a malformed CSV
            raise BadRequest(f"the body is not a readable CSV table: {error}") from error
        if len(frame) == 0:
            raise BadRequest("the CSV table holds no rows to score")
        check_rows(len(frame), max_rows)
        columns = {str(name): frame[name].to_numpy(dtype=object) for name in frame.columns}
        return Table(columns, len(frame)), None
    # Anything else is read as JSON: `curl -d` sends JSON labelled as a form.
    if max_depth is not None:
        check_depth(body, max_depth)
    try:
        payload = json.loads(body)
    except RecursionError as error:  # only without max_depth: never a 500
        raise BadRequest("the JSON nests too deep to parse") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise BadRequest(
            f"the body must be a JSON object with one of {', '.join(INPUT_FORMATS)} "
            f"(MLflow's scoring format), not a JSON {type(payload).__name__}"
        )
    formats = [name for name in INPUT_FORMATS if name in payload]
    if len(formats) != 1:
        raise BadRequest(
            f"the body must hold exactly one of {', '.join(INPUT_FORMATS)}; "
            f"it holds the keys {sorted(payload)}"
        )
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"params must be a JSON object, not {type(params).__name__}")
    check_rows(_row_count(formats[0], payload[formats[0]]), max_rows)
    return _table(formats[0], payload[formats[0]]), params


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) once it passes ``limit`` bytes, before it is in memory: at
    once on a Content-Length over the limit, else (chunked) as soon as the bytes read so far
    pass it. uvicorn discards what the client still sends, so the connection stays usable."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(
            f"the body is {int(declared):,} bytes; send fewer rows per request",
            limit,
            "bytes",
            "--max-body-bytes",
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLarge(
                f"the body is over {limit:,} bytes; send fewer rows per request",
                limit,
                "bytes",
                "--max-body-bytes",
            )
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _table(fmt: str, data: Any) -> Table:
    """The rows of one of MLflow's input formats: ``dataframe_split`` (columns and rows of
    values), row objects (``dataframe_records``, or a list under ``inputs``/``instances``) or
    an object of columns (``inputs``/``instances``)."""
    if fmt == DF_SPLIT:
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BadRequest(f"{fmt} must be an object with 'columns' and 'data' (a list of rows)")
        return _from_rows(fmt, data.get("columns"), data["data"])
    if isinstance(data, list):
        if not all(isinstance(row, dict) for row in data):
            raise BadRequest(
                f"{fmt} must name its columns: rows must be objects (column name -> value)"
            )
        names = list(dict.fromkeys(name for row in data for name in row))
        return _from_rows(fmt, names, [[row.get(name) for name in names] for row in data])
    if fmt == DF_RECORDS or not isinstance(data, dict):
        raise BadRequest(f"{fmt} must be a list of row objects or an object of columns")
    columns = {name: np.atleast_1d(np.array(values, dtype=object)) for name, values in data.items()}
    if any(values.ndim != 1 for values in columns.values()):
        raise BadRequest(f"each column of {fmt} must hold one value per row")
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise BadRequest(f"the columns of {fmt} must all be as long; they hold {sorted(lengths)}")
    rows = lengths.pop() if lengths else 0
    if rows == 0:
        raise BadRequest(f"{fmt} holds no rows to score")
    return Table(columns, rows)


def _from_rows(fmt: str, names: Any, rows: Any) -> Table:
    """Named columns from rows of values, each row a list of one value per name."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise BadRequest(
            f"{fmt} must name its columns: rows must be objects (column name -> value), or "
            "dataframe_split must give 'columns'"
        )
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise BadRequest(f"{fmt} repeats the columns {duplicated}")
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"{fmt} holds no rows to score")
    # Checked before numpy sees them: it would stretch a short row across every column.
    width = len(names)
    short = [i for i, row in enumerate(rows) if not isinstance(row, list) or len(row) != width]
    if short:
        raise BadRequest(
            f"each row of {fmt} must be a list of one value for each of its {width} columns; "
            f"row {short[0]} is {json.dumps(rows[short[0]])[:200]}"
        )
    values = np.empty((len(rows), width), dtype=object)
    values[:] = rows  # a list or an object as a value stays one object: its column says no
    return Table({name: values[:, i] for i, name in enumerate(names)}, len(rows))


def numbers(table: Table, column: str) -> np.ndarray:
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
    rule = numbers(table, RULE_CONFIDENCE)
    with np.errstate(invalid="ignore"):
        out_of_range = ~np.isnan(rule) & ((rule < 0.0) | (rule > 1.0))
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise BadRequest(f"rule_confidence must be within [0, 1]; row {row} holds {rule[row]}")
    return Rows(ids, texts(table, "entity_id"), env, texts(table, "variant"), ml, rule)


def rule_fallback(rule: np.ndarray) -> dict[str, np.ndarray]:
    """What is served without a model: the caller's ``rule_confidence``, flagged fallback."""
    rows = len(rule)
    return {
        "probability": np.full(rows, np.nan),
        "calibrated": np.full(rows, np.nan),
        "blended_confidence": rule,
        "decision": np.nan_to_num(rule, nan=-1.0) >= 0.5,
        "fallback": np.ones(rows, dtype=bool),
        "policy_version": np.full(rows, None, dtype=object),
    }


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


@dataclass(frozen=True)
class Served:
    """One request's served rows, as buffered for the write-back: turned into landing records
    on the write-back thread, not on the request's path."""

    at: str
    model_version: str | None
    rows: Rows
    confidence: np.ndarray
    feature_names: tuple[str, ...]
    features: np.ndarray  # rows x feature_names, float64

    def __len__(self) -> int:
        return len(self.confidence)


def landing_lines(batches: list[Served]) -> tuple[str, int]:
    """JSON lines of contract prediction records for ``batches``, and how many served rows are
    not records (no confidence, or no feature at all). Batches sharing a feature list are
    built together: the record fields with one ``to_json``, the features object with another,
    spliced before the record's closing brace."""
    groups: dict[tuple[str, ...], list[Served]] = {}
    for batch in batches:
        groups.setdefault(batch.feature_names, []).append(batch)
    texts_out, skipped = [], 0
    for names, group in groups.items():
        counts = [len(b) for b in group]
        confidence = np.concatenate([b.confidence for b in group])
        keep = ~np.isnan(confidence) & bool(names)
        skipped += int((~keep).sum())
        if not keep.any():
            continue

        def column(name: str, group: list[Served] = group, keep: np.ndarray = keep) -> np.ndarray:
            return np.concatenate([getattr(b.rows, name) for b in group])[keep]

        records = pd.DataFrame(
            {
                "prediction_id": column("ids"),
                "predicted_at": np.repeat([b.at for b in group], counts)[keep],
                "confidence": confidence[keep],
                "entity_id": column("entity_id"),
                "environment": column("environment"),
                "model_version": np.repeat(
                    np.array([b.model_version for b in group], dtype=object), counts
                )[keep],
                "rule_confidence": column("rule_confidence"),
                "ml_enhanced": column("ml_enhanced"),
                "variant": column("variant"),
            },
            columns=list(RECORD_FIELDS),
        )
        values = np.concatenate([b.features for b in group])[keep]
        features = pd.DataFrame(np.where(np.isfinite(values), values, np.nan), columns=names)
        outer = records.to_json(orient="records", lines=True, double_precision=15)
        inner = features.to_json(orient="records", lines=True, double_precision=15)
        lines = pd.Series(outer.rstrip("\n").split("\n"), dtype=object)
        spliced = lines.str[:-1] + ',"features":' + pd.Series(inner.rstrip("\n").split("\n")) + "}"
        texts_out.append("\n".join(spliced) + "\n")
    return "".join(texts_out), skipped


# ---------------------------------------------------------------------------------------------
# The champion, its metrics, its reloads and the write-back.


@dataclass(frozen=True)
class Champion:
    """A loaded version, swapped in whole: a request scores with one consistent champion."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    python_model: Any  # its ProbabilityModel: predict without MLflow's per-call schema check
    version: str
    policy_version: int
    features: tuple[str, ...]
    input_columns: tuple[str, ...]
    loaded_at: datetime

    def score(
        self, columns: dict[str, np.ndarray], rows: int, params: dict | None
    ) -> dict[str, np.ndarray]:
        """The served columns for float ``columns`` (NaN or absent where missing). Without
        params, the model's own array path, ``ProbabilityModel.score`` (the request was
        checked already: numbers, ranges); with params, or for a version logged before that
        path existed, MLflow's ``predict``, which checks params against the signature."""
        score = getattr(self.python_model, "score", None)
        if score is not None and not params:
            return score(columns, rows)
        missing = np.full(rows, np.nan)
        frame = pd.DataFrame({name: columns.get(name, missing) for name in self.input_columns})
        served = self.model.predict(frame, params=params or None)
        return {name: served[name].to_numpy() for name in OUTPUT_COLUMNS}


class Metrics:
    """Prometheus metrics in a registry owned by the app (tests and several apps per process
    never collide on the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "feedback_serving_latency_seconds",
            "Time to answer /predict, parse to response",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter("feedback_serving_requests", "Scoring requests", registry=r)
        self.errors = Counter("feedback_serving_errors", "Errors by kind", ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # every kind exported from the start, at 0
        self.rows = Counter("feedback_serving_rows", "Rows served", registry=r)
        self.fallbacks = Counter(
            "feedback_serving_fallbacks", "Rows served rule_confidence (fallback)", registry=r
        )
        self.reloads = Counter("feedback_serving_reloads", "Champion loads swapped in", registry=r)
        self.champion_version = Gauge(
            "feedback_serving_champion_version", "Served model version (NaN: none)", registry=r
        )
        self.policy_version = Gauge(
            "feedback_serving_policy_version", "Served policy version (NaN: none)", registry=r
        )
        self.champion_version.set(float("nan"))
        self.policy_version.set(float("nan"))
        self.dropped_rows = Counter(
            "feedback_serving_writeback_dropped_rows",
            "Served rows not written back: the write-back buffer was full (writes failing)",
            registry=r,
        )
        self.dropped_log_lines = Counter(
            "feedback_serving_request_log_dropped_lines",
            "Request-log lines not written: the buffer was full (writes failing)",
            registry=r,
        )


class WriteBack:
    """Served rows as contract prediction records, and one line per request, buffered and
    written every ``flush_rows`` rows or ``flush_seconds`` and at shutdown. Landing files are
    written under a dot-name (which landing discovery skips) and renamed, so ingestion never
    reads half a file; their name carries the server's environment
    (``served-<environment>-<time>-<pid>-<n>.jsonl``), which ingestion keeps as ``source_file``.

    Bounded: at most ``max_buffered_rows`` served rows (and as many request-log lines) are held,
    counting those being written; while writes fail (a full disk) and the buffer is full, new
    ones are dropped, counted in ``feedback_serving_writeback_dropped_rows_total`` and logged
    once per flush interval; the requests are still answered. A failed flush is retried after
    ``flush_seconds``, not on every request.

    Retention: the request logs are pruned by age and size (``prune_request_logs``). Landing
    ``served-*.jsonl`` files are never deleted here: ingestion owns them, and deleting one not
    yet ingested would lose its rows."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self._lock = threading.Lock()  # guards the buffers and their counts
        self._flushing = threading.Lock()  # one flush at a time, in order
        self._served: list[Served] = []
        self._requests: list[dict] = []
        self._buffered = 0  # rows in _served: the flush trigger
        self._held_rows = 0  # rows in _served and being written: the cap
        self._held_lines = 0  # lines in _requests and being written
        self._dropped_rows = self._dropped_lines = 0  # since the last flush logged them
        self._seq = 0
        self._pruned_at = float("-inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-writeback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, served: Served | None, request: dict) -> None:
        cap = self.config.max_buffered_rows
        with self._lock:
            if served is not None:
                if self._held_rows + len(served) <= cap:
                    self._served.append(served)
                    self._buffered += len(served)
                    self._held_rows += len(served)
                else:
                    self._dropped_rows += len(served)
                    self.metrics.dropped_rows.inc(len(served))
            if self._held_lines < cap:
                self._requests.append(request)
                self._held_lines += 1
            else:
                self._dropped_lines += 1
                self.metrics.dropped_log_lines.inc()
            full = self._buffered >= self.config.flush_rows
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._prune()
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            if not self.flush():
                self._stop.wait(self.config.flush_seconds)  # back off: the disk is no better

    def close(self) -> None:
        """Stop the flusher and write what is left: nothing is lost on a clean shutdown."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def flush(self) -> bool:
        """Write what is buffered; False when a write failed (the rows are kept for the next
        flush, within the cap)."""
        with self._flushing:
            with self._lock:
                served, requests = self._served, self._requests
                self._served, self._requests, self._buffered = [], [], 0
                dropped = self._dropped_rows, self._dropped_lines
                self._dropped_rows = self._dropped_lines = 0
            if any(dropped):
                log.warning(
                    "the write-back buffer was full (%d rows, --max-buffered-rows; are writes "
                    "failing?): dropped %d served rows and %d request-log lines since the last "
                    "flush (answered, not written)",
                    self.config.max_buffered_rows,
                    *dropped,
                )
            rows = sum(len(batch) for batch in served)
            try:
                if served:
                    self._write_records(served)
                    self._release(rows, 0)
                    served, rows = [], 0
                if requests:
                    self._write_requests(requests)
                    self._release(0, len(requests))
                return True
            except OSError:  # a full or unwritable disk: keep the rows and try again
                log.exception("could not write served rows; kept in memory for the next flush")
                self.metrics.errors.labels("write").inc()
                with self._lock:  # back to the front of the buffer, in order
                    self._served[:0] = served
                    self._requests[:0] = requests
                    self._buffered += rows
                return False
            except Exception:  # a bug: retrying would fail the same way forever
                log.exception("could not build the records of %d served rows; dropped", rows)
                self.metrics.errors.labels("write").inc()
                self._release(rows, len(requests))
                return True

    def _release(self, rows: int, lines: int) -> None:
        """Written (or given up): no longer counted against the cap."""
        with self._lock:
            self._held_rows -= rows
            self._held_lines -= lines

    def _prune(self) -> None:
        """Prune the request logs at start and every ``PRUNE_SECONDS``; never raises."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        try:
            prune_request_logs(
                self.config.requests_dir,
                datetime.now(UTC),
                self.config.log_retention_days,
                self.config.log_retention_bytes,
            )
        except Exception:  # retention must never stop the write-back
            log.exception("could not prune the request logs in %s", self.config.requests_dir)

    def _write_records(self, served: list[Served]) -> None:
        """One landing file per flush."""
        text, skipped = landing_lines(served)
        if skipped:
            log.warning(
                "%d served rows had no confidence (no model score and no rule_confidence) or "
                "no feature: not written to the landing zone",
                skipped,
            )
        if not text:
            return
        self._seq += 1
        name = (
            f"served-{self.config.environment}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-"
            f"{os.getpid()}-{self._seq}.jsonl"
        )
        write_atomically(self.config.predictions_dir / name, text)

    def _write_requests(self, requests: list[dict]) -> None:
        """Append to ``serving/requests-<UTC day>.jsonl``, one write per day file."""
        folder = self.config.requests_dir
        folder.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for line in requests:
            by_day.setdefault(line["at"][:10].replace("-", ""), []).append(json.dumps(line))
        for day, lines in by_day.items():
            with open(folder / f"requests-{day}.jsonl", "a", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")


REQUEST_LOG = re.compile(r"requests-(\d{8})\.jsonl")


def prune_request_logs(folder: Path, now: datetime, days: int, max_bytes: int) -> list[Path]:
    """Delete the request logs (``requests-YYYYMMDD.jsonl``) dated more than ``days`` days
    before ``now``'s UTC day, then more, oldest first, while together they hold over
    ``max_bytes``; return the deleted paths. Today's file (and any dated later) is never
    deleted: the server appends to it. Only the server's own request logs: the landing
    ``served-*.jsonl`` files belong to ingestion, which may not have read them yet."""
    if not folder.is_dir():
        return []
    today = now.astimezone(UTC).strftime("%Y%m%d")
    oldest_kept = (now.astimezone(UTC) - timedelta(days=days)).strftime("%Y%m%d")
    logs = sorted(
        (match[1], path)
        for path in folder.iterdir()
        if (match := REQUEST_LOG.fullmatch(path.name)) and path.is_file()
    )
    sizes = {path: path.stat().st_size for _, path in logs}
    total = sum(sizes.values())
    deleted = []
    for day, path in logs:  # oldest first
        if day >= today or (day >= oldest_kept and total <= max_bytes):
            break
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not delete the old request log %s: %s", path, error)
            continue
        total -= sizes[path]
        deleted.append(path)
    if deleted:
        log.info(
            "pruned %d request logs (older than %d days, or over %d bytes in all): %s",
            len(deleted),
            days,
            max_bytes,
            ", ".join(path.name for path in deleted),
        )
    return deleted


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a dot-named temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


class Reloader:
    """Polls the registry for the alias's version and the active policy version; when either
    moves, loads that version and swaps it in. A failed poll or load keeps the old champion.

    The first load runs on this thread too, not before the server binds: an MLflow that does
    not answer (its client retries for minutes) must not keep the port closed. Until a champion
    is loaded every row is served its ``rule_confidence`` and /health says why (``problem``)."""

    def __init__(self, config: ServerConfig, state: ServingState):
        self.config = config
        self.state = state
        self._registry: Registry | None = None
        self._seen: tuple[str, int] | None = None  # (version, policy) last loaded for
        self._failed: tuple[str, int] | str | None = None  # what last failed, logged once
        self.problem: str | None = (
            f"loading {self.config.model_name}@{self.config.alias} from the registry"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; a registry call in flight is not waited for beyond
        ``RELOAD_JOIN_SECONDS`` (the daemon thread ends with the process)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(RELOAD_JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("a registry call is still running at shutdown; not waiting for it")

    def _run(self) -> None:
        self.check()
        while not self._stop.wait(self.config.reload_interval_seconds):
            self.check()

    def check(self) -> None:
        """One poll; never raises (the server keeps serving whatever it has)."""
        wanted: tuple[str, int] | None = None
        try:
            if self._registry is None:
                self._registry = Registry(
                    self.config.tracking_uri,
                    str(self.config.data_dir / "mlartifacts"),
                    model_name=self.config.model_name,
                )
            version = self._registry.alias_version(self.config.alias)
            if version is None:
                self._note_failure(
                    logging.WARNING,
                    "no alias",
                    f"{self.config.model_name} has no version aliased {self.config.alias!r}; "
                    + ("keeping the loaded one" if self.state.champion else "serving fallback"),
                )
                return
            wanted = (version, self._registry.active_policy_version())
            if wanted != self._seen:
                self.state.swap(self._load(version))
                self._seen, self._failed = wanted, None
            self.problem = None
        except Exception as error:  # a failed reload must never stop serving
            self.state.metrics.errors.labels("reload").inc()
            first_line = (str(error).splitlines() or [""])[0][:300]
            self._note_failure(
                logging.ERROR,
                wanted or "poll",
                f"reload of {self.config.model_name}@{self.config.alias} failed "
                f"({type(error).__name__}: {first_line}); "
                + ("keeping the current champion" if self.state.champion else "serving fallback"),
            )

    def _note_failure(self, level: int, key: tuple[str, int] | str, message: str) -> None:
        self.problem = message
        if key != self._failed:  # log once per cause, not every poll
            log.log(level, message)
            self._failed = key

    def _load(self, version: str) -> Champion:
        """The resolved version, loaded by number: the version reported is the one served even
        if the alias moves again during the load."""
        model = mlflow.pyfunc.load_model(f"models:/{self.config.model_name}/{version}")
        inputs = tuple(model.metadata.get_input_schema().input_names())
        python_model = model.unwrap_python_model()
        policy = getattr(python_model, "policy", None) or {}
        champion = Champion(
            model=model,
            python_model=python_model,
            version=str(version),
            policy_version=int(policy.get("version", 0)),
            features=tuple(name for name in inputs if name != RULE_CONFIDENCE),
            input_columns=inputs,
            loaded_at=datetime.now(UTC),
        )
        try:  # one throwaway prediction before it serves, so the first request is not slow
            champion.score({name: np.zeros(1) for name in inputs}, 1, None)
        except Exception:
            log.warning("version %s failed a warm-up prediction", version, exc_info=True)
        log.info(
            "serving %s version %s with policy v%d",
            self.config.model_name,
            champion.version,
            champion.policy_version,
        )
        return champion


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class ServingState:
    """Everything a request needs: the champion (swapped atomically), the metrics, the
    write-back."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.writeback = WriteBack(config, self.metrics)
        self.reloader = Reloader(config, self)
        self.champion: Champion | None = None
        self.predict_failed = False  # the last predict raised: degraded until one succeeds
        self.started = time.monotonic()
        self._limited_for: Champion | None = None

    def swap(self, champion: Champion) -> None:
        self.champion = champion  # one reference assignment: requests see old or new, whole
        self.predict_failed = False
        self.metrics.reloads.inc()
        self.metrics.champion_version.set(float(champion.version))
        self.metrics.policy_version.set(float(champion.policy_version))

    def _limit_threads(self, champion: Champion) -> None:
        """One-thread native pools on the scoring thread (the event loop's), once per champion:
        a new model may have loaded new pools, and OpenMP limits are per thread."""
        threadpool_limits(limits=1)
        self._limited_for = champion

    def start(self) -> None:
        self.reloader.start()
        self.writeback.start()

    def stop(self) -> None:
        """Shutdown order (uvicorn has finished the in-flight requests): no more reloads, then
        flush."""
        self.reloader.stop()
        self.writeback.close()

    def health(self) -> dict:
        """``degraded`` with the ``reason`` while no champion is loaded (the first load still
        running, no alias, the registry unreachable) or the champion's last predict failed;
        ``reload_problem``: why the last poll failed, even while an older champion serves."""
        champion = self.champion
        problem = self.reloader.problem
        if champion is None:
            reason = problem or "no champion loaded"
        elif self.predict_failed:
            reason = f"version {champion.version} failed its last prediction"
        else:
            reason = None
        return {
            "status": "degraded" if reason else "ok",
            "reason": reason,
            "model_name": self.config.model_name,
            "alias": self.config.alias,
            "environment": self.config.environment,
            "champion_version": champion.version if champion else None,
            "policy_version": champion.policy_version if champion else None,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "loaded_at": utc_iso(champion.loaded_at) if champion else None,
            "reload_problem": problem,
        }

    def answer(
        self, body: bytes, content_type: str | None, started: float, test: bool = False
    ) -> Answer:
        """Parse, score, buffer the write-back (not for a ``test`` request) and record the
        metrics."""
        at = datetime.now(UTC)
        served_by: Champion | None = None
        buffered: Served | None = None
        try:
            table, params = parse_request(
                body, content_type, self.config.max_rows, self.config.max_depth
            )
            checked = checked_rows(table, self.config.environment)
            served, served_by, names, features = self._score(table, checked, params)
            rows, fallbacks = table.rows, int(np.sum(served["fallback"]))
            version = served_by.version if served_by else None
            status, payload = 200, predictions_json(checked.ids, version, served)
            if not test:
                confidence = np.asarray(served["blended_confidence"], dtype="float64")
                buffered = Served(utc_iso(at), version, checked, confidence, names, features)
        except BadRequest as error:
            return self.refuse(error, started, test, at)
        except Exception as error:  # a bug here must answer 500, not take the server down
            log.exception("could not answer a scoring request")
            self.metrics.errors.labels("internal").inc()
            status, rows, fallbacks, buffered = 500, 0, 0, None
            message = f"internal error: {type(error).__name__}: {error}"
            payload = json.dumps({"error_code": "INTERNAL_ERROR", "message": message}).encode()
        self._record(at, started, status, rows, fallbacks, served_by, buffered, test)
        return Answer(status, payload)

    def refuse(
        self, error: BadRequest, started: float, test: bool, at: datetime | None = None
    ) -> Answer:
        """A request answered with ``error`` (400, or 413 before its body was read): counted
        under the error's kind and logged like any other."""
        self.metrics.errors.labels(error.kind).inc()
        at = at or datetime.now(UTC)
        self._record(at, started, error.status, 0, 0, None, None, test)
        return Answer(error.status, json.dumps(error.payload()).encode())

    def _record(
        self,
        at: datetime,
        started: float,
        status: int,
        rows: int,
        fallbacks: int,
        served_by: Champion | None,
        buffered: Served | None,
        test: bool,
    ) -> None:
        """The request's metrics and its request-log line; its rows to the write-back."""
        latency = time.perf_counter() - started
        self.metrics.requests.inc()
        self.metrics.latency.observe(latency)
        self.metrics.rows.inc(rows)
        self.metrics.fallbacks.inc(fallbacks)
        self.writeback.add(
            buffered,
            {
                "at": utc_iso(at),
                "latency_ms": round(latency * 1000.0, 3),
                "rows": rows,
                "fallbacks": fallbacks,
                "status": status,
                "model_version": served_by.version if served_by else None,
                "policy_version": served_by.policy_version if served_by else None,
                "test": test,
                "server_environment": self.config.environment,
            },
        )

    def _score(
        self, table: Table, checked: Rows, params: dict | None
    ) -> tuple[dict[str, np.ndarray], Champion | None, tuple[str, ...], np.ndarray]:
        """The served columns, the champion that served them (None: the rule fallback), and
        the feature names and values to record."""
        champion = self.champion  # read once: the whole request sees one champion
        # No model: record the numeric columns the caller sent as its features.
        names = champion.features if champion is not None else sent_numbers(table)
        columns = {name: numbers(table, name) for name in names}
        features = np.column_stack(list(columns.values())) if names else np.empty((table.rows, 0))
        if champion is None:
            return rule_fallback(checked.rule_confidence), None, names, features
        if self._limited_for is not champion:
            self._limit_threads(champion)
        columns[RULE_CONFIDENCE] = checked.rule_confidence
        try:
            served = champion.score(columns, table.rows, params)
        except MlflowException as error:
            if error.error_code in CLIENT_ERROR_CODES:  # the caller's params, not the model
                raise BadRequest(error.message) from error
            return self._predict_failed(champion, checked), None, names, features
        except Exception:
            return self._predict_failed(champion, checked), None, names, features
        self.predict_failed = False
        return served, champion, names, features

    def _predict_failed(self, champion: Champion, checked: Rows) -> dict[str, np.ndarray]:
        """Serve every row its rule_confidence; /health says degraded until a predict works."""
        log.exception("version %s failed to predict; serving rule_confidence", champion.version)
        self.metrics.errors.labels("predict").inc()
        self.predict_failed = True
        return rule_fallback(checked.rule_confidence)


# ---------------------------------------------------------------------------------------------
# The app.


def is_test(value: str | None) -> bool:
    """Whether an ``X-Feedback-Test`` header value marks the request as a test."""
    return value is not None and value.strip().lower() in TEST_VALUES


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI app; its lifespan starts the reload thread (which loads the champion: the
    port binds without waiting for the registry) and the write-back thread, and on shutdown
    (uvicorn's SIGTERM/SIGINT) flushes every buffered row."""
    state = ServingState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    app = FastAPI(title="feedback_pipeline serving", lifespan=lifespan)
    app.state.serving = state

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        test = is_test(request.headers.get(TEST_HEADER))
        try:
            body = await read_body(request, config.max_body_bytes)
        except TooLarge as error:
            answer = state.refuse(error, started, test)
        except ClientDisconnect:  # nobody to answer; not the server's error
            return Response(status_code=400)
        else:
            # Scored on the event loop's own thread: one worker scores one request at a time
            # anyway, and handing each request to another thread costs GIL switches (up to the
            # 5 ms switch interval each) that showed as tail latency under load.
            answer = state.answer(body, request.headers.get("content-type"), started, test)
        return Response(answer.body, status_code=answer.status, media_type="application/json")

    app.post("/predict")(predict)
    app.post("/invocations")(predict)  # MLflow's scoring path: its clients work unchanged

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(state.health())

    @app.get("/ping")
    async def ping() -> Response:
        """MLflow's liveness probe."""
        return Response("\n", media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT, in one uvicorn worker (the reload and write-back threads
    and the scoring thread belong to one process)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        workers=1,
        access_log=False,  # one line per request goes to serving/requests-*.jsonl instead
        log_level="info",
    )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, shared by ``feedback-pipeline serve`` and ``python -m``."""
    defaults = ServerConfig(data_dir=Path("data"))
    parser.add_argument("--host", default=defaults.host, help="default: loopback only")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--alias", default=defaults.alias)
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=defaults.reload_interval_seconds,
        help="seconds between checks of the alias and the serving policy",
    )
    parser.add_argument(
        "--flush-rows", type=int, default=defaults.flush_rows, help="write back after N rows"
    )
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=defaults.flush_seconds,
        help="or after this long, whichever comes first",
    )
    parser.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        default=defaults.environment,
        help="written on served rows that do not say, in the landing file names and the "
        "request log",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="a larger request body is refused (413) before it is read",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=defaults.max_rows,
        help="a request with more rows is refused (413)",
    )
    parser.add_argument(
        "--max-depth",
        type=int,
        default=defaults.max_depth,
        help="JSON nested deeper is refused (400)",
    )
    parser.add_argument(
        "--max-buffered-rows",
        type=int,
        default=defaults.max_buffered_rows,
        help="served rows held for the write-back; while writes fail, more are dropped",
    )
    parser.add_argument(
        "--log-retention-days",
        type=int,
        default=defaults.log_retention_days,
        help="request logs (DATA/serving/requests-*.jsonl) older than this are deleted",
    )
    parser.add_argument(
        "--log-retention-bytes",
        type=int,
        default=defaults.log_retention_bytes,
        help="and the oldest, while all of them hold more (today's is always kept)",
    )


def config_from_args(args: argparse.Namespace, data_dir: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir.resolve(),
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        alias=args.alias,
        reload_interval_seconds=args.reload_interval,
        flush_rows=args.flush_rows,
        flush_seconds=args.flush_seconds,
        environment=args.environment,
        max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows,
        max_depth=args.max_depth,
        max_buffered_rows=args.max_buffered_rows,
        log_retention_days=args.log_retention_days,
        log_retention_bytes=args.log_retention_bytes,
    )


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m feedback_pipeline.serving.server",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    return config_from_args(args, args.data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
