"""MLflow's scoring protocol: a request body (JSON in any of MLflow's four input formats, or
CSV) parsed into named columns, with a BadRequest (400) or TooLarge (413) that says what is wrong
for every bad shape. Pure functions on bytes and values, no HTTP server objects, so the protocol
is tested in process and the app only wires it to routes."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

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
# The shallowest nesting MLflow's formats need: {"dataframe_split": {"data": [[...]]}}.
MIN_DEPTH = 4
# Bytes per step of the nesting scan: its int32 temporaries stay a few MB for any body.
SCAN_CHUNK = 1 << 18


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
