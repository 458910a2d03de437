"""`make demo`, the front door: the committed sample runs end to end and the champion predicts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLE_LANDING = Path(__file__).resolve().parents[1] / "data" / "landing"


def test_demo_runs_the_sample_end_to_end_and_the_champion_predicts(tmp_path):
    data_dir, home = tmp_path / "data", tmp_path / "dagster_home"
    shutil.copytree(SAMPLE_LANDING, data_dir / "landing")
    home.mkdir()
    env = {**os.environ, "FEEDBACK_PIPELINE_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("FEEDBACK_PIPELINE_SETTINGS", None)
    done = subprocess.run(
        [sys.executable, "-m", "feedback_pipeline.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "retrain_job succeeded" in done.stdout
    assert "This run's decision: promoted" in done.stdout  # a fresh registry: first champion
    assert "models:/feedback_model@champion loads and predicts" in done.stdout
    # The champion is scored on exactly the features its signature names.
    assert "not defined in the model signature" not in output
    assert (data_dir / "warehouse.duckdb").exists() and (data_dir / "mlflow.db").exists()
