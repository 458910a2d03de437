"""A drift episode retrains by itself: the Dagster daemon runs monitoring_sensor on real time,
which asks for one retrain once k of the last n windows drifted, and that run moves the
champion; the ticks after it ask for nothing. Waits are on recorded runs and ticks, bounded;
the daemon is stopped at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import InstigatorTick, TickStatus

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline_tests.conftest import run_job, with_mlflow_store
from feedback_pipeline_tests.defs.test_operations import finished_runs
from feedback_pipeline_tests.servers import (
    BIN,
    Server,
    project_env,
    wait_until,
    write_dagster_home,
)

pytestmark = pytest.mark.end_to_end


def test_the_daemon_retrains_once_when_drift_holds_and_the_champion_moves(tmp_path, monkeypatch):
    home, data_dir = tmp_path / "dagster_home", tmp_path / "data"
    write_dagster_home(home)
    today = datetime.now(UTC).date()
    start = today - timedelta(days=40)
    # Volatility shifts by 1.5 SD seven days ago; the champion is trained as of the day before.
    simulate(
        data_dir / "landing",
        SimulationConfig(
            start=start, days=40, predictions_per_day=100, baseline_per_day=30, seed=9,
            bad_rate=0.0, drift_start_day=33, drift_feature="volatility", drift_shift=1.5,
        ),
    )  # fmt: skip
    with_mlflow_store(data_dir)  # the registry the runs will share, migrated once
    trained_as_of = datetime.combine(start + timedelta(days=34), datetime.min.time())
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        "monitoring:\n  sensor_interval_seconds: 5\n"
        "triggers:\n  new_labels_threshold: 100000000\n  landing_interval_seconds: 3600\n"
    )
    monkeypatch.setenv("FEEDBACK_PIPELINE_SETTINGS", str(settings_file))
    (tmp_path / "setup_instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "setup_instance")) as setup:
        result = run_job(data_dir, setup, as_of=trained_as_of.isoformat())
    assert result.success
    registry = local_registry(data_dir)
    before = registry.alias_version(CHAMPION)

    daemon = Server(
        [str(BIN / "dagster-daemon"), "run", "-m", "feedback_pipeline.definitions"],
        project_env(home, data_dir, settings_file),
        tmp_path / "daemon.log",
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = wait_until(
                lambda: finished_runs(instance, "retrain_job", "monitoring"),
                420,
                "a retrain run started by monitoring_sensor",
                daemon,
            )
            assert runs[0].is_success, daemon.tail()
            after = registry.alias_version(CHAMPION)
            assert after != before
            assert registry.version_tags(after)["trigger"] == "monitoring"
            assert registry.version_tags(after)["dagster_run_id"] == runs[0].run_id
            # The episode does not ask again: the two ticks after the run are skipped (the run
            # key already stops a repeat while it runs; these see the new champion's reference).
            ended = instance.get_run_record_by_id(runs[0].run_id).end_time

            def two_later_ticks():
                ticks = ticks_after(instance, "monitoring_sensor", ended)
                return ticks if len(ticks) >= 2 else None

            later = wait_until(
                two_later_ticks,
                120,
                "two monitoring_sensor ticks after the retrain",
                daemon,
            )
            assert all(tick.status == TickStatus.SKIPPED for tick in later), later
            assert len(instance.get_runs(dg.RunsFilter(tags={"trigger": "monitoring"}))) == 1
    finally:
        daemon.stop()


def ticks_after(instance: dg.DagsterInstance, sensor: str, after: float) -> list[InstigatorTick]:
    """The recorded, completed ticks of ``sensor`` that began after ``after`` (a timestamp)."""
    (state,) = [s for s in instance.all_instigator_state() if s.instigator_name == sensor]
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
    return [tick for tick in ticks if tick.status != TickStatus.STARTED]
