"""What the retrain-loop fault tests share: runs and commands in processes of their own, and
reads of the ledger, the warehouse and the Dagster event log after them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import yaml

from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.promotion import ledger
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF
from feedback_pipeline_tests.servers import (
    BIN,
    Server,
    project_env,
    without_mlflow_env,
)

AS_OF = SIMULATED_AS_OF
WEEK_EARLIER = AS_OF - timedelta(days=7)
UNREACHABLE_MLFLOW = "http://127.0.0.1:9"  # the discard port: nothing listens there


def launch(
    job: str,
    home: Path,
    data_dir: Path,
    as_of=AS_OF,
    settings_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """``dagster job execute`` in a process of its own (its output in a log file)."""
    config = home / f"run-{uuid.uuid4().hex[:8]}.yaml"
    config.write_text(yaml.safe_dump(run_context_config(as_of.isoformat())))
    env = {**project_env(home, data_dir, settings_file), **(extra_env or {})}
    command = [str(BIN / "dagster"), "job", "execute", "-m", "feedback_pipeline.definitions"]
    return Server([*command, "-j", job, "-c", str(config)], env, config.with_suffix(".log"))


def finish(process: Server, timeout: float = 420) -> int:
    code = process.process.wait(timeout=timeout)
    process.stop()
    return code


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """``feedback-pipeline`` in a process of its own."""
    environment = without_mlflow_env()
    return subprocess.run(
        [str(BIN / "feedback-pipeline"), "--data-dir", str(data_dir), *args],
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ledger_rows(data_dir: Path) -> list[dict]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        cursor = con.execute("SELECT * FROM ops.retraining_events ORDER BY recorded_at")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def last_recorded_champion(data_dir: Path) -> str | None:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return ledger.last_champion(con)
    finally:
        con.close()


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """Each asset's materialization metadata in run ``run_id``, as plain values."""
    found = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.dagster_event.event_specific_data.materialization
        found[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    return found


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    return "\n".join(
        record.dagster_event.step_failure_data.error.message
        for record in records
        if record.dagster_event.step_failure_data.error is not None
    )


def python(script: str, *args: object) -> subprocess.Popen:
    env = without_mlflow_env()
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
