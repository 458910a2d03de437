"""Processes killed mid-work, for real (`kill -9`): between the alias move and its ledger row,
a whole run under the daemon, and ingestion between batches. Nothing may be lost, duplicated or
left holding the queue, and a rerun must finish what the killed process began."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import dagster as dg
import duckdb
import pytest

from feedback_pipeline.defs.run_launcher import run_worker
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline_tests.conftest import prediction, run_job
from feedback_pipeline_tests.faults.runs import (
    AS_OF,
    last_recorded_champion,
    launch,
    ledger_rows,
    python,
)
from feedback_pipeline_tests.servers import (
    BIN,
    Server,
    project_env,
    wait_until,
    write_dagster_home,
)

pytestmark = pytest.mark.end_to_end

# -- 8: a kill during promotion -----------------------------------------------------------------

KILLED_AFTER_THE_ALIAS_MOVES = """
import os, signal, sys
from pathlib import Path
import dagster as dg
from dagster._core.execution.stats import StepEventStatus

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.registry.mlflow_registry import Registry

original = Registry.set_alias

def set_alias_then_die(self, alias, version):
    original(self, alias, version)
    if alias == CHAMPION:  # the alias has moved, the ledger row is not written yet
        os.kill(os.getpid(), signal.SIGKILL)

Registry.set_alias = set_alias_then_die
data_dir, home, as_of = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with dg.DagsterInstance.from_config(home) as instance:
    build_defs(data_dir).resolve_job_def("retrain_job").execute_in_process(
        instance=instance, run_config=run_context_config(as_of)
    )
"""

VERSION_TAGS = {"fit_key", "training_set_hash", "data_watermark", "procedure", "role", "family"}


def test_a_kill_between_alias_and_ledger_is_repaired_and_reused_by_the_rerun(
    simulated_dir, tmp_path
):
    data_dir, home = simulated_dir, tmp_path / "home"
    write_dagster_home(home)
    killed = python(KILLED_AFTER_THE_ALIAS_MOVES, data_dir, home, AS_OF.isoformat())
    _, err = killed.communicate(timeout=420)
    assert killed.returncode == -signal.SIGKILL, err[-3000:]
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    assert champion is not None  # the cold start moved the alias ...
    assert not any(r["action"] == "retrain" for r in ledger_rows(data_dir))  # ... unledgered
    assert set(registry.version_tags(champion)) >= VERSION_TAGS  # registered whole
    versions = registry.versions()

    with dg.DagsterInstance.from_config(str(home)) as instance:  # the rerun, in this process
        assert run_job(data_dir, instance, as_of=AS_OF.isoformat()).success
    rows = ledger_rows(data_dir)
    assert [r["action"] for r in rows] == ["repair", "retrain"]
    assert rows[0]["old_version"] is None and rows[0]["new_version"] == champion
    assert not rows[1]["promoted"] and "is the current champion" in rows[1]["reason"]
    assert registry.versions() == versions  # the rerun reused every fit, by its fit key
    assert registry.alias_version(CHAMPION) == champion == last_recorded_champion(data_dir)


# -- 2: a killed run ----------------------------------------------------------------------------


def test_a_killed_run_is_marked_failed_and_ledgered_and_the_queue_moves_on(workspace, tmp_path):
    data_dir, home = workspace
    settings_file = tmp_path / "settings.yaml"  # the sensors look every 5 s, not 30 or 60
    settings_file.write_text(
        "triggers:\n  failure_interval_seconds: 5\n  landing_interval_seconds: 5\n"
    )
    env = project_env(home, data_dir, settings_file)
    daemon = Server(
        [str(BIN / "dagster-daemon"), "run", "-m", "feedback_pipeline.definitions"],
        env,
        tmp_path / "daemon.log",
    )
    victim = None
    try:
        # In production the daemon is up before a run dies; so here: the failure sensor has
        # set its cursor before the kill (it only reports failures after its first tick).
        wait_until(
            lambda: "Initiating retrain_failure_sensor" in daemon.tail(10**6),
            120,
            "the failure sensor's first tick",
            daemon,
        )
        victim = launch("retrain_job", home, data_dir, AS_OF, settings_file)
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def worker():
                runs = instance.get_runs(dg.RunsFilter(job_name="retrain_job"))
                return runs and run_worker(instance, runs[0].run_id) and runs[0]

            run = wait_until(worker, 120, "the retrain's run worker", victim)
            pid, _ = run_worker(instance, run.run_id)
            os.kill(pid, signal.SIGKILL)
            victim.process.wait(timeout=30)
            # A new landing file: landing_files_sensor queues an ingest run in the same pool.
            queued_at = time.monotonic()
            (data_dir / "landing" / "predictions" / "after-the-kill.jsonl").write_text(
                json.dumps(prediction("after-the-kill-1")) + "\n"
            )

            def ingest_started():
                runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job"))
                started = dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS
                return runs if runs and runs[0].status in started else None

            (queued,) = wait_until(ingest_started, 120, "the queued run to start", daemon)
            assert queued.tags["trigger"] == "landing_files"
            waited = time.monotonic() - queued_at
            dead = instance.get_run_by_id(run.run_id)
            assert dead.status == dg.DagsterRunStatus.FAILURE
            # ... as run monitoring found it: the killed worker could report nothing itself.
            (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"the run's process (pid {pid}) is gone" in failure.message, failure.message
            assert waited < 120

            def ledgered():
                try:  # the queued ingest run may hold the warehouse for a moment
                    rows = ledger_rows(data_dir)
                except duckdb.IOException:
                    return False
                return any(
                    r["action"] == "failed_retrain" and r["dagster_run_id"] == run.run_id
                    for r in rows
                )

            wait_until(
                ledgered,
                120,
                "retrain_failure_sensor's ledger row",
                daemon,
            )
    finally:
        if victim is not None:
            victim.stop()
        daemon.stop(grace=15)


# -- 2 (ingest): a kill mid-ingestion ----------------------------------------------------------

INGEST_IN_SMALL_BATCHES = """
import sys
from pathlib import Path
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline.ingest.landing_files import ingest_files, landing_files
from feedback_pipeline.warehouse import connection

data_dir = Path(sys.argv[1])
con = connection.connect(data_dir / "warehouse.duckdb")
for kind in ("predictions", "feedback", "baseline"):
    paths = landing_files(data_dir / "landing", kind)
    ingest_files(con, data_dir / "landing", paths, KINDS[kind], lambda m: print(m, flush=True),
                 batch_bytes=256 * 1024)
"""

ACCOUNTING = """
    SELECT (SELECT count(*) FROM raw.predictions),
           (SELECT count(*) FROM raw.feedback_events),
           (SELECT count(*) FROM raw.baseline_examples),
           (SELECT count(*) FROM raw.rejected_records),
           (SELECT count(*) FROM raw.ingested_files),
           (SELECT count(DISTINCT (kind, path)) FROM raw.ingested_files),
           (SELECT count(*) FROM raw.ingested_files
            WHERE records_read <> accepted + duplicates + rejected)
"""


def test_a_kill_mid_ingestion_loses_and_duplicates_no_record(tmp_path):
    from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate

    config = SimulationConfig(days=12, predictions_per_day=600, baseline_per_day=200, seed=5)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    simulate(killed_dir / "landing", config)
    shutil.copytree(killed_dir / "landing", clean_dir / "landing")

    ingest = python(INGEST_IN_SMALL_BATCHES, killed_dir)
    for _ in range(8):  # some batches have committed, more are on their way
        assert ingest.stdout.readline(), ingest.communicate()[1][-3000:]
    ingest.send_signal(signal.SIGKILL)
    ingest.communicate(timeout=30)
    rerun = python(INGEST_IN_SMALL_BATCHES, killed_dir)
    assert rerun.wait(timeout=300) == 0, rerun.communicate()[1][-3000:]
    clean = python(INGEST_IN_SMALL_BATCHES, clean_dir)
    assert clean.wait(timeout=300) == 0, clean.communicate()[1][-3000:]

    counts = {}
    for folder in (killed_dir, clean_dir):
        con = duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True)
        counts[folder] = con.execute(ACCOUNTING).fetchall()[0]
        con.close()
    predictions, _, _, _, files, distinct_files, unbalanced = counts[killed_dir]
    assert predictions > 0 and files == distinct_files and unbalanced == 0
    assert counts[killed_dir] == counts[clean_dir]  # every record once, as without the kill
