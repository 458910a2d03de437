"""Batch predict: the ingestion contract judges every input record; valid rows are scored by
the champion with its serving policy, bad rows get their reason, none is lost."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.families import fit
from feedback_pipeline_tests.conftest import with_mlflow_store
from feedback_pipeline_tests.registry.test_mlflow_registry import FEATURES, training_split


@pytest.fixture
def champion_dir(tmp_path):
    settings = Settings()
    train = training_split()
    family = "logistic_regression"
    estimator = fit(
        family, settings.models.hyperparameters.for_family(family), train, settings.models.seed
    )
    registry = local_registry(with_mlflow_store(tmp_path))
    registered = registry.log_challenger(
        estimator, family, FEATURES, train.X, {"family": family}, {}, {}, "# card"
    )
    registry.set_alias(CHAMPION, registered.version)
    return tmp_path, registered.version


def record(pid: str, **features) -> str:
    return json.dumps(
        {"prediction_id": pid, "features": features or {"momentum": 0.5, "rsi": 0.1, "gap": -0.2},
         "rule_confidence": 0.7, "entity_id": "AAPL"}
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_bad_rows_get_reasons_and_good_rows_are_scored(champion_dir, capsys, suffix):
    data_dir, version = champion_dir
    lines = [
        record("ok-1"),
        record("ok-2", momentum=-1.0, rsi=0.3, gap=0.0),
        record("no-gap", momentum=0.2, rsi=0.1),  # a missing feature: falls back
        "{not json",
        json.dumps({"features": {"momentum": 1.0}}),  # no prediction_id
        json.dumps({"prediction_id": "bad-features", "features": "high"}),
        json.dumps({"prediction_id": "bad-rule", "features": {"rsi": 1}, "rule_confidence": 3}),
    ]  # fmt: skip
    source = data_dir / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = data_dir / f"out{suffix}"

    code = main(["--data-dir", str(data_dir), "predict", "--input", str(source),
                 "--output", str(output), "--json"])  # fmt: skip
    assert code == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["rows"], counts["scored"], counts["rejected"]) == (7, 3, 4)
    assert counts["fallbacks"] == 1 and counts["model_version"] == version

    reader = {".jsonl": "read_json_auto", ".csv": "read_csv_auto", ".parquet": "read_parquet"}
    rows = duckdb.sql(f"SELECT * FROM {reader[suffix]}('{output}') ORDER BY line_no").df()
    assert rows["line_no"].tolist() == list(range(1, 8))  # every record, once, in order
    scored = rows[rows["reason"].isna()].set_index("prediction_id")
    assert set(scored.index) == {"ok-1", "ok-2", "no-gap"}
    for column in ("probability", "calibrated", "blended_confidence", "decision"):
        assert scored.loc[["ok-1", "ok-2"], column].notna().all(), column
    assert scored.loc["no-gap", "fallback"] in (True, "true")
    assert scored.loc["no-gap", "blended_confidence"] == pytest.approx(0.7)
    assert pd.isna(scored.loc["no-gap", "probability"])
    reasons = rows.set_index("line_no")["reason"]
    assert reasons[4] == "malformed JSON"
    assert reasons[5] == "missing required field prediction_id"
    assert "features" in reasons[6] and "rule_confidence" in reasons[7]


def test_predict_says_what_to_do_without_a_champion_or_with_a_bad_output(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(record("a") + "\n")
    local_registry(with_mlflow_store(tmp_path))  # an empty registry
    args = ["--data-dir", str(tmp_path), "predict", "--input", str(source), "--output"]
    assert main([*args, str(tmp_path / "out.jsonl")]) == 2
    assert "no champion yet" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "out.xlsx"), "--version", "1"]) == 2
    assert "no such version" in capsys.readouterr().err
