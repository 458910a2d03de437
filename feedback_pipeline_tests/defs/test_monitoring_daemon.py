"""A drift episode retrains by itself: `dagster dev` (webserver + daemon) runs monitoring_sensor
on real time, which asks for one retrain once k of the last n windows drifted, and that run
moves the champion. Bounded waits; the server listens on 127.0.0.1 and is stopped at the end."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import CHAMPION, local_registry
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline_tests.defs.test_operations import finished_runs
from feedback_pipeline_tests.servers import (
    BIN,
    Server,
    free_port,
    http_ok,
    project_env,
    wait_until,
    write_dagster_home,
)


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
    trained_as_of = datetime.combine(start + timedelta(days=34), datetime.min.time())
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        "monitoring:\n  sensor_interval_seconds: 5\n"
        "triggers:\n  new_labels_threshold: 100000000\n  landing_interval_seconds: 3600\n"
    )
    monkeypatch.setenv("FEEDBACK_PIPELINE_SETTINGS", str(settings_file))
    (tmp_path / "setup_instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "setup_instance")) as setup:
        result = (
            build_defs(data_dir)
            .resolve_job_def("retrain_job")
            .execute_in_process(
                instance=setup, run_config=run_context_config(trained_as_of.isoformat())
            )
        )
    assert result.success
    registry = local_registry(data_dir)
    before = registry.alias_version(CHAMPION)

    port = free_port()
    server = Server(
        [str(BIN / "dagster"), "dev", "-m", "feedback_pipeline.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        project_env(home, data_dir, settings_file),
        tmp_path / "dagster_dev.log",
    )  # fmt: skip
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/server_info"), 180, "Dagster", server)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = wait_until(
                lambda: finished_runs(instance, "retrain_job", "monitoring"),
                420,
                "a retrain run started by monitoring_sensor",
                server,
            )
            assert runs[0].is_success, server.tail()
            after = registry.alias_version(CHAMPION)
            assert after != before
            assert registry.version_tags(after)["trigger"] == "monitoring"
            assert registry.version_tags(after)["dagster_run_id"] == runs[0].run_id
            time.sleep(15)  # three more ticks: the episode does not ask again
            assert len(instance.get_runs(dg.RunsFilter(tags={"trigger": "monitoring"}))) == 1
    finally:
        server.stop()
