"""Shared fixtures: a real DuckDB file, a landing zone and a Dagster instance in tmp dirs."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import duckdb
import pytest
from filelock import FileLock

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.settings import LabelingSettings
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.servers import write_dagster_home

# Wall seconds of the longest files on two workers (`pytest --durations=0`, 2026-12-05). xdist
# hands out whole files in collection order (`make test` passes --no-loadscope-reorder, or it
# would sort them by test count and leave these for last): longest first, so no worker is left
# alone with a long file at the end while the other idles.
LONGEST_FILES = {
    "defs/test_operations.py": 100,
    "faults/test_killed_processes.py": 85,
    "faults/test_concurrent_runs.py": 51,
    "defs/test_monitoring_daemon.py": 50,
    "faults/test_server_faults.py": 32,
    "test_demo.py": 30,
    "faults/test_outages.py": 25,
    "defs/test_run_context.py": 24,
    "backtest/test_replay.py": 22,
    "defs/test_ingest_job.py": 20,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def expected_seconds(item: pytest.Item) -> int:
        return LONGEST_FILES.get(item.path.relative_to(here).as_posix(), 0)

    items.sort(key=expected_seconds, reverse=True)  # stable: the rest keep their order


@functools.cache
def _empty_mlflow_store() -> Path:
    """An MLflow sqlite store with every migration applied and nothing in it, made by MLflow
    once per test process: a new store costs about 2.6 s of migrations, a copy 0.05 s."""
    folder = Path(tempfile.mkdtemp(prefix="mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    from mlflow.tracking import MlflowClient  # MLflow loads in the workers, not the controller

    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def with_mlflow_store(data_dir: Path) -> Path:
    """``data_dir`` with an empty, migrated ``mlflow.db`` (where the project's registry lives)
    unless it has one; returns ``data_dir``. Every test that needs a new registry starts here
    instead of paying MLflow's migrations again; `make demo`'s test starts without one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "mlflow.db").exists():
        shutil.copyfile(_empty_mlflow_store(), data_dir / "mlflow.db")
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "landing").mkdir()
    return with_mlflow_store(tmp_path)


@pytest.fixture
def landing(data_dir: Path) -> Path:
    return data_dir / "landing"


@pytest.fixture
def con(data_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(data_dir / "warehouse.duckdb")
    yield connection
    connection.close()


@pytest.fixture
def write_landing(landing: Path) -> Callable[..., Path]:
    """Write a landing file: records (dicts, or raw str/bytes lines) or raw file bytes."""

    def write(kind: str, name: str, records: list | bytes, newline: str = "\n") -> Path:
        path = landing / kind / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(records, bytes):
            path.write_bytes(records)
            return path
        lines = [
            r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
            for r in records
        ]
        path.write_bytes(b"".join(line + newline.encode() for line in lines))
        return path

    return write


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as test_instance:
        yield test_instance


def prediction(pid: str, **overrides) -> dict:
    record = {
        "prediction_id": pid,
        "predicted_at": "2026-01-05T10:00:00Z",
        "confidence": 0.6,
        "features": {"momentum": 0.5, "volatility": -1.0},
        "entity_id": "AAPL",
        "environment": "prod",
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not ...}


def feedback(eid: str, pid: str, event_type: str, at: str, **overrides) -> dict:
    record = {"event_id": eid, "prediction_id": pid, "event_type": event_type, "occurred_at": at}
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not ...}


def baseline(eid: str, **overrides) -> dict:
    record = {
        "example_id": eid,
        "as_of": "2026-01-05T23:00:00Z",
        "label": 1,
        "features": {"momentum": 0.1},
    }
    record.update(overrides)
    return {k: v for k, v in record.items() if v is not ...}


SIMULATED_AS_OF = datetime(2026, 2, 17)

# The committed sample of January-February 2026 (data/README.md says how it was made) and the
# point in time just after it ends.
SAMPLE_LANDING = Path(__file__).resolve().parent / "fixtures" / "sample_landing"
SAMPLE_AS_OF = "2026-02-22T00:00:00Z"


def simulate_and_ingest(
    folder: Path,
    config: SimulationConfig,
    kinds: tuple[str, ...] = ("predictions", "feedback", "baseline"),
) -> duckdb.DuckDBPyConnection:
    """``config``'s stream as landing files in ``folder/landing``, ``kinds`` ingested into
    ``folder/warehouse.duckdb``, an empty registry beside it; returns the open connection (the
    caller closes it)."""
    simulate(folder / "landing", config)
    with_mlflow_store(folder)
    connection = warehouse.connect(folder / "warehouse.duckdb")
    for kind in kinds:
        ingest_kind(connection, folder / "landing", kind)
    return connection


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session: with xdist, the first worker to ask builds it
    while the others wait on a lock, then all read the same folder (pytest-xdist's recipe for
    session data; every worker building its own cost each of them the same CPU again)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # no xdist: this process is the session
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this session's, shared by its workers
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died halfway
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _simulate_six_weeks(folder: Path) -> None:
    connection = simulate_and_ingest(
        folder,
        SimulationConfig(
            days=42, predictions_per_day=150, baseline_per_day=75, seed=11, bad_rate=0.01
        ),
    )
    build_labeled_outcomes(connection, LabelingSettings(), SIMULATED_AS_OF)
    connection.close()


@pytest.fixture(scope="session")
def simulated_source(tmp_path_factory) -> Path:
    """Six weeks of simulated, drifting data, ingested and labeled once per test session."""
    return built_once(tmp_path_factory, "simulated", _simulate_six_weeks)


@pytest.fixture
def simulated_dir(simulated_source: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated data directory (warehouse and landing files)."""
    target = tmp_path / "data"
    shutil.copytree(simulated_source, target)
    return target


def run_job(
    data_dir: Path,
    instance: dg.DagsterInstance,
    job: str = "retrain_job",
    assets: list[str] | None = None,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
    **context: object,
) -> dg.ExecuteInProcessResult:
    """``job`` of ``data_dir``'s definitions (or only ``assets`` of it) in process, with one run
    context: ``context`` are ``run_context_config``'s arguments (as_of, settings_overrides)."""
    return (
        build_defs(data_dir)
        .resolve_job_def(job)
        .execute_in_process(
            instance=instance,
            run_config=run_context_config(**context),
            asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
            tags=tags,
            raise_on_error=raise_on_error,
        )
    )


class Championed(NamedTuple):
    """A data directory after one weekly retrain_job, that run's id and its Dagster home."""

    data_dir: Path
    run_id: str
    home: Path


@pytest.fixture(scope="session")
def championed(simulated_source: Path, tmp_path_factory) -> Championed:
    """The simulated data with a champion: retrain_job as of ``SIMULATED_AS_OF`` (trigger
    "weekly") in an instance of the project's dagster.yaml, once per test session. Read it;
    tests that change it take ``championed_dir``."""

    def retrain(folder: Path) -> None:
        shutil.copytree(simulated_source, folder / "data")
        write_dagster_home(folder / "home")
        with dg.DagsterInstance.from_config(str(folder / "home")) as instance:
            result = run_job(
                folder / "data",
                instance,
                tags={"trigger": "weekly"},
                as_of=SIMULATED_AS_OF.isoformat(),
            )
        assert result.success
        (folder / "run_id").write_text(result.run_id)

    folder = built_once(tmp_path_factory, "championed", retrain)
    from feedback_pipeline.registry.mlflow_registry import local_registry

    assert local_registry(folder / "data").alias_version(CHAMPION) is not None
    return Championed(folder / "data", (folder / "run_id").read_text(), folder / "home")


@pytest.fixture
def championed_dir(championed: Championed, tmp_path: Path) -> Path:
    """A private copy of the championed data directory. Its registry keeps the session's
    artifact store, which new runs only add their own folders to."""
    target = tmp_path / "championed"
    shutil.copytree(championed.data_dir, target)
    return target


@pytest.fixture(autouse=True)
def isolated_mlflow_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI; keep tests independent."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.pop(name, None) for name in names}
    yield
    for name in names:
        os.environ.pop(name, None)
        if saved[name] is not None:
            os.environ[name] = saved[name]
