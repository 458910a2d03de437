"""The server's request parsing, in process: every MLflow scoring format gives the same rows,
every bad shape is a BadRequest that says what is wrong, and the answer is valid JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from feedback_pipeline.served_policy import OUTPUT_COLUMNS
from feedback_pipeline.serving.server import (
    BadRequest,
    checked_rows,
    parse_float_column,
    parse_request,
    predictions_json,
    rule_fallback,
)

ROWS = pd.DataFrame(
    {
        "momentum": [1.5, -0.25, 0.0],
        "rsi": [0.1, None, 7.0],
        "rule_confidence": [0.2, 0.9, None],
        "entity_id": ["AAPL", None, "MSFT"],
    }
)


def bodies() -> dict[str, tuple[bytes, str]]:
    records = json.loads(ROWS.to_json(orient="records"))
    columns = {name: json.loads(ROWS[name].to_json(orient="values")) for name in ROWS}
    as_json = {
        "dataframe_split": {"dataframe_split": json.loads(ROWS.to_json(orient="split"))},
        "dataframe_records": {"dataframe_records": records},
        "inputs as columns": {"inputs": columns},
        "instances as rows": {"instances": records},
    }
    out = {name: (json.dumps(body).encode(), "application/json") for name, body in as_json.items()}
    out["csv"] = (ROWS.to_csv(index=False).encode(), "text/csv")
    return out


@pytest.mark.parametrize("fmt", list(bodies()))
def test_every_format_gives_the_same_rows(fmt):
    body, content_type = bodies()[fmt]
    table, params = parse_request(body, content_type)
    assert params is None and table.rows == len(ROWS)
    assert list(table.columns) == list(ROWS.columns)
    for name in ("momentum", "rsi", "rule_confidence"):
        np.testing.assert_array_equal(
            parse_float_column(table, name), ROWS[name].to_numpy(dtype=float)
        )
    assert np.isnan(
        parse_float_column(table, "gap")
    ).all()  # an absent column is missing, not an error
    checked = checked_rows(table, "prod")
    assert checked.entity_id.tolist() == ["AAPL", None, "MSFT"]
    assert checked.environment.tolist() == ["prod"] * 3
    assert len(set(checked.ids)) == 3  # ids assigned where the caller sent none


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"dataframe_split": {"columns": ["a"], "data": [[1.0, 2.0]]}}, "each of its 1 columns"),
        # numpy would stretch these across the columns: a short row, a flat list, an object
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[0.5], [0.7]]}}, r"row 0 is \[0.5\]"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [1.0, 2.0]}}, "row 0 is 1.0"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [{"a": 1}]}}, "must be a list"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3]]}}, "row 1 is"),
        ({"dataframe_split": {"columns": ["a", "a"], "data": [[1.0, 2.0]]}}, "repeats"),
        ({"dataframe_split": {"data": [[1.0]]}}, "must name its columns"),
        ({"dataframe_split": [[1.0]]}, "'columns' and 'data'"),
        ({"dataframe_records": []}, "no rows"),
        ({"dataframe_records": [[1.0, 2.0]]}, "must name its columns"),
        ({"inputs": {"a": [1.0, 2.0], "b": [1.0]}}, "as long"),
        ({"inputs": {"a": [[1.0], [2.0]]}}, "one value per row"),
        ({"inputs": 3}, "list of row objects or an object of columns"),
        ({"dataframe_records": [{"a": 1.0}], "params": [1]}, "params must be a JSON object"),
        ({"dataframe_records": [{"a": 1}], "inputs": {"a": [1]}}, "exactly one of"),
        ([{"a": 1.0}], "must be a JSON object"),
    ],
)
def test_a_bad_shape_says_what_is_wrong(payload, says):
    with pytest.raises(BadRequest, match=says):
        parse_request(json.dumps(payload).encode(), "application/json")


def test_bad_values_name_the_column_and_the_row():
    table, _ = parse_request(
        json.dumps({"dataframe_records": [{"rsi": 1.0}, {"rsi": "high"}]}).encode(), None
    )
    with pytest.raises(BadRequest, match=r"'rsi' must hold numbers or null; row 1 holds 'high'"):
        parse_float_column(table, "rsi")
    for value in ("NaN", 10**400, [0.5], {"x": 1}):  # not numbers, though float() may read them
        table, _ = parse_request(
            json.dumps({"dataframe_records": [{"rsi": None}, {"rsi": value}]}).encode(), None
        )
        with pytest.raises(BadRequest, match=r"'rsi' must hold numbers or null; row 1 holds"):
            parse_float_column(table, "rsi")
    table, _ = parse_request(b'{"dataframe_records": [{"rsi": NaN}, {"rsi": "0.5"}]}', None)
    np.testing.assert_array_equal(
        parse_float_column(table, "rsi"), [np.nan, 0.5]
    )  # NaN literal: missing
    for row, says in [
        ({"rule_confidence": 1.5}, r"within \[0, 1\]; row 0 holds 1.5"),
        ({"environment": "staging"}, "environment must be one of"),
        ({"entity_id": 7}, "'entity_id' must hold strings"),
        ({"ml_enhanced": "yes"}, "'ml_enhanced' must hold true, false"),
    ]:
        table, _ = parse_request(json.dumps({"dataframe_records": [row]}).encode(), None)
        with pytest.raises(BadRequest, match=says):
            checked_rows(table, "prod")
    table, _ = parse_request(
        json.dumps(
            {"dataframe_records": [{"prediction_id": "x"}, {"prediction_id": "x"}]}
        ).encode(),
        None,
    )
    with pytest.raises(BadRequest, match="prediction_id repeats"):
        checked_rows(table, "prod")


def test_the_answer_is_valid_json_with_null_for_missing():
    served = rule_fallback(np.array([0.7, np.nan]))
    answer = json.loads(
        predictions_json(np.array(["a", "b"], dtype=object), None, served),
        parse_constant=lambda name: pytest.fail(f"{name} is not JSON"),
    )
    first, second = answer["predictions"]
    assert list(first) == ["prediction_id", "model_version", *OUTPUT_COLUMNS]
    assert first["blended_confidence"] == 0.7 and first["decision"] is True
    assert first["probability"] is None and first["policy_version"] is None
    assert second["blended_confidence"] is None and second["decision"] is False
    assert second["fallback"] is True
