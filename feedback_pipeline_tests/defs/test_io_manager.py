"""The project's IO manager: a run reads the asset values it built itself, even while another run
of the same assets overwrites them, and a run of a downstream asset alone reads the latest ones."""

import threading
from pathlib import Path

import dagster as dg
import pytest

from feedback_pipeline.defs.io_manager import RunScopedIOManager
from feedback_pipeline.defs.resources import local_resources


class Built(dg.Config):
    value: int
    wait_for_other_run: bool = False


other_run_done = threading.Event()
first_run_built = threading.Event()


@dg.asset
def built(config: Built) -> int:
    return config.value


@dg.asset(deps=[built])
def pause(config: Built) -> None:
    """Holds the first run between building ``built`` and reading it, while the second runs."""
    if config.wait_for_other_run:
        first_run_built.set()
        assert other_run_done.wait(timeout=60), "the second run never finished"


@dg.asset(deps=[pause])
def read_back(built: int) -> int:
    return built


def run_config(value: int, wait: bool = False) -> dict:
    config = {"value": value, "wait_for_other_run": wait}
    return {"ops": {"built": {"config": config}, "pause": {"config": config}}}


def materialize_all(instance: dg.DagsterInstance, io_manager, value: int, wait: bool = False):
    return dg.materialize(
        [built, pause, read_back],
        instance=instance,
        resources={"io_manager": io_manager},
        run_config=run_config(value, wait),
    )


# Two runs in threads of one process: Dagster's local compute-log capture redirects the
# process's stdout and stderr file descriptors per run, and two captures at once left the first
# run's `tail` processes waiting for an end of file (30 s timeouts, twice; the run outlived the
# test's join). Captured logs are not what these tests are about: they capture nothing.
NO_COMPUTE_LOGS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


@pytest.fixture
def instance(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=NO_COMPUTE_LOGS) as test_instance:
        yield test_instance


def test_two_runs_at_once_each_read_the_value_they_built(instance, tmp_path: Path):
    io_manager = RunScopedIOManager(base_dir=str(tmp_path / "storage"))
    first_run_built.clear(), other_run_done.clear()
    results = {}

    def first() -> None:
        results["first"] = materialize_all(instance, io_manager, 1, wait=True)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_run_built.wait(timeout=60)
    second = materialize_all(instance, io_manager, 2)  # overwrites "built" while the first waits
    other_run_done.set()
    thread.join(timeout=60)

    assert second.output_for_node("read_back") == 2
    assert results["first"].output_for_node("read_back") == 1


def test_a_downstream_asset_alone_reads_the_latest_materialization(instance, tmp_path: Path):
    io_manager = RunScopedIOManager(base_dir=str(tmp_path / "storage"))
    materialize_all(instance, io_manager, 3)
    latest = materialize_all(instance, io_manager, 4)
    alone = dg.materialize(
        [built, pause, read_back],
        selection=[read_back],
        instance=instance,
        resources={"io_manager": io_manager},
    )
    assert alone.output_for_node("read_back") == 4
    assert latest.run_id != alone.run_id


def test_a_downstream_asset_before_its_upstream_was_ever_built_says_what_to_do(
    instance, tmp_path: Path
):
    io_manager = RunScopedIOManager(base_dir=str(tmp_path / "storage"))
    with pytest.raises(FileNotFoundError, match="materialize built"):
        dg.materialize(
            [built, pause, read_back],
            selection=[read_back],
            instance=instance,
            resources={"io_manager": io_manager},
        )


def test_the_project_resources_use_the_run_scoped_io_manager(tmp_path: Path):
    assert isinstance(local_resources(tmp_path)["io_manager"], RunScopedIOManager)


def test_ended_runs_values_are_deleted_unless_they_are_the_latest(instance, tmp_path: Path):
    storage = tmp_path / "storage"
    io_manager = RunScopedIOManager(base_dir=str(storage), keep_days=0)
    first = materialize_all(instance, io_manager, 5).run_id
    second = materialize_all(instance, io_manager, 6).run_id
    third = materialize_all(instance, io_manager, 7).run_id
    runs = storage / "runs"
    # The third run pruned the first; the second held the latest values when the third started.
    assert not (runs / first).exists()
    assert sorted(path.name for path in runs.iterdir()) == sorted([second, third])
    assert (runs / third / "built").exists()

    kept = RunScopedIOManager(base_dir=str(storage), keep_days=1)
    materialize_all(instance, kept, 8)
    assert (runs / second).exists()  # ended less than a day ago: it may still be re-executed
