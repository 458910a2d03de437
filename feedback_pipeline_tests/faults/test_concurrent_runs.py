"""Faults of the retrain loop when runs and promoters meet: two `dagster job execute` runs at
once, a backdated run, a decision judged against a champion that another process moved since,
and promoters waiting on the promotion lock of a process that is then killed. After each, the
champion alias, the ledger, the registered versions and the warehouse must agree."""

from __future__ import annotations

import signal
import time

import dagster as dg
import pytest

from feedback_pipeline.promotion.apply import apply_decision
from feedback_pipeline.promotion.judge import evaluate_and_judge
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.warehouse import connection
from feedback_pipeline_tests.conftest import run_job
from feedback_pipeline_tests.faults.runs import (
    AS_OF,
    WEEK_EARLIER,
    cli,
    failure_messages,
    finish,
    last_recorded_champion,
    launch,
    ledger_rows,
    materializations,
    python,
)
from feedback_pipeline_tests.servers import BIN, Server, wait_until, without_mlflow_env

pytestmark = pytest.mark.end_to_end

# -- 3: two retrains at once --------------------------------------------------------------------


def test_two_retrains_at_once_each_train_on_the_set_they_built(workspace):
    data_dir, home = workspace
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    backdated = launch("retrain_job", home, data_dir, WEEK_EARLIER)
    time.sleep(1.5)
    current = launch("retrain_job", home, data_dir, AS_OF)
    finish(backdated), finish(current)

    succeeded = 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="retrain_job"))
        assert len(runs) == 2
        for run in runs:
            as_of = run.run_config["resources"]["run_context"]["config"]["as_of"]
            if not run.is_success:  # the one clear conflict a shared label table allows
                assert "labeled_outcomes was built as of" in failure_messages(instance, run.run_id)
                continue
            succeeded += 1
            assets = materializations(instance, run.run_id)
            built = assets["training_set"]["content_hash"]
            assert assets["training_set"]["as_of"] == as_of
            assert assets["challenger_models"]["training_set_hash"] == built
            assert assets["evaluation_report"]["training_set_hash"] == built
            assert assets["challenger_models"]["as_of"] == as_of
            for version in registry.versions():
                tags = registry.version_tags(version)
                if tags.get("dagster_run_id") == run.run_id:
                    assert tags["training_set_hash"] == built
            (row,) = [r for r in ledger_rows(data_dir) if r["dagster_run_id"] == run.run_id]
            assert row["as_of"].isoformat() == as_of
    assert succeeded >= 1
    # Neither may move the champion: one is backdated, the other retrains on the same data.
    assert registry.alias_version(CHAMPION) == champion
    assert last_recorded_champion(data_dir) == champion


# -- 5: a backdated run --------------------------------------------------------------------------


def test_a_backdated_run_never_replaces_a_newer_champion(workspace):
    data_dir, home = workspace
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    with dg.DagsterInstance.from_config(str(home)) as instance:  # one run: in this process
        backdated = run_job(data_dir, instance, as_of=WEEK_EARLIER.isoformat())
    assert backdated.success
    row = ledger_rows(data_dir)[-1]
    assert row["action"] == "retrain" and not row["promoted"], row["reason"]
    assert (
        "backdated" in row["reason"]
        and registry.version_tags(champion)["data_watermark"] in (row["reason"])
    )
    assert registry.alias_version(CHAMPION) == champion
    assert row["new_version"] == champion


# -- 4: promoters racing for the alias ----------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from feedback_pipeline.promotion.lock import promotion_lock
from feedback_pipeline.warehouse import connection

data_dir, signals = Path(sys.argv[1]), Path(sys.argv[2])
con = connection.connect(data_dir / "warehouse.duckdb")
with promotion_lock(con):
    con.close()  # only the promotion lock is held: the warehouse is free for others
    (signals / "held").write_text("1")
    time.sleep(600)
"""


def test_a_decision_judged_against_a_champion_that_moved_since_is_refused_as_stale(workspace):
    data_dir, _ = workspace
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    other = next(v for v in registry.versions() if v != champion)
    settings = Settings()
    with connection.connect(data_dir / "warehouse.duckdb") as con:  # as one run step does
        trained = train_challengers(con, registry, settings, ["xgboost"], False, {}, print)
        report = evaluate_and_judge(con, registry, trained, settings.gate, 42, print)
    assert report.champion_version == champion
    # Between the judging step and the applying step, another process moves the champion.
    forced = cli(data_dir, "promote", other, "--reason", "an operator's move mid-retrain")
    assert forced.returncode == 0, forced.stderr
    with connection.connect(data_dir / "warehouse.duckdb") as con:
        change = apply_decision(con, registry, report, "test", None, settings, print)
    assert not change.promoted and change.reason.startswith("stale"), change
    assert f"v{champion}" in change.reason and f"v{other}" in change.reason
    assert registry.alias_version(CHAMPION) == other  # the operator's move stands
    rows = ledger_rows(data_dir)
    assert [r["action"] for r in rows[-2:]] == ["forced_promotion", "retrain"]
    assert rows[-1]["reason"] == change.reason and rows[-1]["new_version"] == other
    assert last_recorded_champion(data_dir) == other


def test_a_promoter_waits_for_the_lock_and_a_killed_holder_releases_it(workspace, tmp_path):
    data_dir, _ = workspace
    registry = local_registry(data_dir)
    champion = registry.alias_version(CHAMPION)
    other = next(v for v in registry.versions() if v != champion)
    holder = python(HOLD_LOCK, data_dir, tmp_path)
    try:
        wait_until(lambda: (tmp_path / "held").exists() or holder.poll() is not None, 60, "lock")
        assert holder.poll() is None, holder.communicate()[1][-3000:]
        promote = Server(
            [str(BIN / "feedback-pipeline"), "--data-dir", str(data_dir), "promote", other,
             "--reason", "waits for the lock"],
            without_mlflow_env(), tmp_path / "promote.log",
        )  # fmt: skip
        wait_until(
            lambda: "waiting up to 120 s for the promotion lock" in promote.tail(),
            120,
            "promote to wait for the lock",
            promote,
        )
        assert promote.process.poll() is None, promote.tail()
        assert registry.alias_version(CHAMPION) == champion
        holder.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert promote.process.wait(timeout=60) == 0, promote.tail()
        assert time.monotonic() - killed_at < 30
        promote.stop()
    finally:
        holder.kill()
        holder.wait()
    assert registry.alias_version(CHAMPION) == other
    assert ledger_rows(data_dir)[-1]["action"] == "forced_promotion"
    assert last_recorded_champion(data_dir) == other
