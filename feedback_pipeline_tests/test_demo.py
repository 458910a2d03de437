"""The front door: `make demo` on an empty data dir, then a retrain with no run config at all
(what the weekly schedule or the UI's "Materialize all" does) on the data the demo laid down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from feedback_pipeline.registry.mlflow_registry import CHALLENGER, CHAMPION, local_registry

pytestmark = pytest.mark.end_to_end

DAGSTER = Path(sys.executable).with_name("dagster")


def dagster(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The Dagster CLI on this project's code location, as a user would run it."""
    command = [DAGSTER, *args[:2], "-m", "feedback_pipeline.definitions", *args[2:]]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_demo_then_retrain_job_and_materialize_all_with_no_config_move_no_alias(tmp_path):
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

    again = dagster(env, tmp_path, "job", "execute", "-j", "retrain_job")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)) == aliases
    assert registry.versions() == versions  # the same data makes the same model: no new one
    # The UI's "Materialize all": every asset, the backtest included, with no config at all.
    everything = dagster(env, tmp_path, "asset", "materialize", "--select", "*")
    assert everything.returncode == 0, everything.stdout[-3000:] + everything.stderr[-3000:]
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
