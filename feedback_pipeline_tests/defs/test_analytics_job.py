"""analytics_job end to end in a real Dagster instance after retrain_job: the assets show their
tables and plots, and a serving policy reaches consumers of the champion through the registry
(apply changes what a fresh load serves, rollback restores it, without a retrain)."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import default_tracking_uri
from feedback_pipeline.settings import AB_METRICS
from feedback_pipeline_tests.defs.test_retrain_job import run

CHAMPION_URI = "models:/feedback_model@champion"


@pytest.fixture(scope="module")
def analysed(championed, tmp_path_factory):
    """The championed data after analytics_job, once per module: read it, or copy it."""
    data_dir = tmp_path_factory.mktemp("analysed") / "data"
    shutil.copytree(championed.data_dir, data_dir)
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("home"))) as instance:
        return data_dir, run(data_dir, instance, "analytics_job")


def metadata(result, asset: str) -> dict:
    (materialization,) = result.asset_materializations_for_node(asset)
    return materialization.metadata


def test_the_analytics_assets_show_their_tables_and_plots(analysed):
    _, result = analysed
    stats = metadata(result, "feedback_stats")
    assert stats["predictions"].value > 1000
    assert stats["fp_rate_trend"].value.startswith("![weekly FP rate](data:image/png;base64,iVBOR")
    assert stats["weekly"].value.startswith("| week")
    assert "| variant       | B" in stats["segments"].value
    assert stats["note_terms"].value == "(none)"  # this stream has no ratings, so no notes

    ab = metadata(result, "ab_comparison")
    assert ab["comparison"].value == "variant B vs A"
    assert set(ab["recommendations"].value) == set(AB_METRICS) - {"mean_rating"}
    assert "A has 0 and B has 0 samples" in ab["skipped"].value["mean_rating"]  # no ratings
    assert "p_value" in ab["results"].value

    policy = metadata(result, "serving_policy")
    assert policy["policy_version"].value == 1
    assert policy["decision"].value.startswith("v1 proposed, not applied")  # dry run by default
    for stage in ("threshold", "rule_weights", "recalibration", "blend_weight"):
        assert f"| {stage}" in policy["stages"].value
    assert "| current" in policy["held_out"].value and "| proposed" in policy["held_out"].value
    assert policy["reliability"].value.startswith("![reliability")
    assert "data:image/png;base64,iVBOR" in policy["reliability"].value


def served_rows(data_dir) -> pd.DataFrame:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    rows = con.execute(
        """SELECT t.*, l.rule_confidence FROM training.training_set t
           JOIN labeled.labeled_outcomes l ON l.prediction_id = t.row_id
           WHERE t.split = 'holdout' ORDER BY t.row_id LIMIT 40"""
    ).df()
    con.close()
    return rows


def serve_fresh(data_dir, rows: pd.DataFrame):
    """What a consumer gets from a fresh load of the champion."""
    mlflow.set_tracking_uri(default_tracking_uri(data_dir))
    mlflow.set_registry_uri(default_tracking_uri(data_dir))
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    features = model.metadata.get_input_schema().input_names()
    return model, model.predict(rows.reindex(columns=features))


def cli_json(data_dir, capsys, *args: str):
    assert main(["--data-dir", str(data_dir), "policy", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_apply_then_rollback_changes_and_restores_what_the_champion_serves(
    analysed, tmp_path, capsys
):
    data_dir = tmp_path / "data"
    shutil.copytree(analysed[0], data_dir)
    rows = served_rows(data_dir)
    _, before = serve_fresh(data_dir, rows)
    assert list(before.columns) == [
        "probability", "calibrated", "blended_confidence", "decision", "fallback",
        "policy_version",
    ]  # fmt: skip
    assert (before["policy_version"] == 0).all() and not before["fallback"].any()

    shown = cli_json(data_dir, capsys, "show")
    proposal = shown["latest_proposal"]
    assert proposal["version"] == 1 and proposal["status"] == "proposed"
    assert any(stage["changed"] for stage in proposal["stages"]), proposal["stages"]

    applied = cli_json(data_dir, capsys, "apply", "--reason", "reviewed the held-out figures")
    assert (applied["old_version"], applied["new_version"]) == (0, 1)
    _, after = serve_fresh(data_dir, rows)
    assert (after["policy_version"] == 1).all()
    assert not np.allclose(after["blended_confidence"], before["blended_confidence"])
    assert cli_json(data_dir, capsys, "show")["served_by_champion"] == 1

    rolled = cli_json(data_dir, capsys, "rollback", "--reason", "FP complaints")
    assert (rolled["old_version"], rolled["new_version"]) == (1, 0)
    _, restored = serve_fresh(data_dir, rows)
    pd.testing.assert_frame_equal(restored, before)

    history = {row["policy_version"]: row for row in cli_json(data_dir, capsys, "history")}
    assert history[1]["status"] == "rolled_back" and history[1]["reason"] == "FP complaints"
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    actions = con.execute(
        "SELECT action FROM ops.retraining_events WHERE action LIKE 'policy%' ORDER BY recorded_at"
    ).fetchall()
    con.close()
    assert actions == [("policy_applied",), ("policy_rolled_back",)]

    assert main(["--data-dir", str(data_dir), "policy", "rollback", "--reason", "again"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def policy_state(data_dir) -> tuple[list[tuple], list[tuple], int]:
    """The policies' statuses, the ledger's policy rows, the version the registry serves."""
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        statuses = con.execute(
            "SELECT policy_version, status FROM ops.serving_policies ORDER BY 1"
        ).fetchall()
        ledgered = con.execute(
            "SELECT action FROM ops.retraining_events WHERE action LIKE 'policy%'"
        ).fetchall()
    finally:
        con.close()
    return statuses, ledgered, local_registry(data_dir).active_policy_version()


def test_policy_apply_changes_nothing_when_mlflow_does_not_answer(
    analysed, tmp_path, capsys, monkeypatch
):
    data_dir = tmp_path / "data"
    shutil.copytree(analysed[0], data_dir)
    before = policy_state(data_dir)
    assert (1, "proposed") in before[0] and before[2] == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    code = main(["--data-dir", str(data_dir), "policy", "apply", "--reason", "outage"])
    error = capsys.readouterr().err
    assert code == 3, error
    assert "MLflow at http://127.0.0.1:9 did not answer" in error
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert policy_state(data_dir) == before  # no status, no ledger row, no registry tag moved


def test_a_row_the_champion_cannot_score_falls_back_to_rule_confidence_and_is_counted(analysed):
    data_dir, _ = analysed
    rows = served_rows(data_dir).head(6)
    model, _ = serve_fresh(data_dir, rows)
    feature = model.metadata.get_input_schema().input_names()[0]
    rows.loc[rows.index[:2], feature] = np.nan
    served = model.predict(rows.reindex(columns=model.metadata.get_input_schema().input_names()))
    assert served["fallback"].tolist() == [True, True, False, False, False, False]
    assert served["blended_confidence"].head(2).tolist() == rows["rule_confidence"].head(2).tolist()
    assert served["probability"].head(2).isna().all()
    assert model.unwrap_python_model().fallback_count == 2
