"""The front door: `make demo` on an empty data dir, then a retrain with no run config at all
(what the weekly schedule or the UI's "Materialize all" does) on the data the demo laid down."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION

pytestmark = pytest.mark.end_to_end


def test_demo_then_retrain_job_and_materialize_all_with_no_config_move_no_alias(
    tmp_path, monkeypatch
):
    data_dir, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "FEEDBACK_PIPELINE_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("FEEDBACK_PIPELINE_SETTINGS", None)
    demo = subprocess.run(
        [sys.executable, "-m", "feedback_pipeline.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Laid down a demo landing zone" in demo.stdout
    assert "retrain_job succeeded" in demo.stdout
    assert "This run's decision: promoted" in demo.stdout  # a fresh registry: first champion
    # The analytics: weekly stats, a recommendation per policy stage, one A/B comparison, and
    # the champion serving the policy's columns (one row falls back to rule_confidence).
    assert "analytics_job succeeded" in demo.stdout
    assert "## Weekly" in demo.stdout and "## Note terms of good and bad labels" in demo.stdout
    assert "newest proposal: v1 (proposed;" in demo.stdout
    for stage in ("threshold", "rule_weights", "recalibration", "blend_weight"):
        assert f"| {stage} " in demo.stdout
    assert "accept_rate (variant B vs A, two-proportion z-test)" in demo.stdout
    assert "models:/feedback_model@champion loads and serves the active policy" in demo.stdout
    served_header = demo.stdout.split("loads and serves the active policy")[1].splitlines()[1]
    assert served_header.split() == [
        "probability", "calibrated", "blended_confidence", "decision", "fallback",
        "policy_version",
    ]  # fmt: skip
    # The champion is scored on exactly the features its signature names.
    assert "not defined in the model signature" not in output
    registry = local_registry(data_dir)
    aliases = (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER))
    versions = registry.versions()
    assert aliases[0] is not None

    # The weekly schedule's retrain and the UI's "Materialize all" (every asset, the backtest
    # included), each with no run config at all, in this process on the demo's Dagster home
    # (`dagster job execute` itself is exercised in test_ingest_job).
    monkeypatch.delenv("FEEDBACK_PIPELINE_SETTINGS", raising=False)
    defs = build_defs(data_dir)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        again = defs.resolve_job_def("retrain_job").execute_in_process(instance=instance)
        assert again.success
        assert (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)) == aliases
        assert registry.versions() == versions  # the same data makes the same model: no new one
        everything = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance
        )
        assert everything.success
        materialized = {
            e.asset_key.to_user_string() for e in everything.get_asset_materialization_events()
        }
        assert materialized == {
            spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()
        }
    assert (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)) == aliases
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    ledger = con.execute(
        "SELECT promoted, trigger FROM ops.retraining_events ORDER BY recorded_at"
    ).fetchall()
    con.close()
    assert ledger == [(True, "demo"), (False, "manual"), (False, "manual")]
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    proposals = con.execute(
        "SELECT policy_version, status FROM ops.serving_policies ORDER BY 1"
    ).fetchall()
    con.close()
    assert proposals == [(1, "proposed"), (2, "proposed")]  # dry run: nothing served unasked
    con = duckdb.connect(str(data_dir / "backtest" / "warehouse.duckdb"), read_only=True)
    policies = con.execute("SELECT DISTINCT policy FROM backtest.periods").fetchall()
    con.close()
    assert {p for (p,) in policies} >= {"policy", "retrain_always", "refit_everything"}
