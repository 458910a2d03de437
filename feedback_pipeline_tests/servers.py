"""Real processes for operations tests: `dagster dev` (webserver + daemon) and the MLflow UI,
on loopback ports of a temp instance, stopped with their whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dagster_home(home: Path) -> None:
    """An instance like the project's dagster.yaml, with every path inside ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        f"""storage:
  sqlite:
    base_dir: {home}/storage
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}/artifacts
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {home}/compute_logs
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  pools:
    granularity: run
    default_limit: 1
"""
    )


def project_env(home: Path, data_dir: Path, settings_file: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        DAGSTER_HOME=str(home),
        FEEDBACK_PIPELINE_DATA_DIR=str(data_dir),
        DAGSTER_DISABLE_TELEMETRY="yes",
        PYTHONUNBUFFERED="1",
    )
    if settings_file is not None:
        env["FEEDBACK_PIPELINE_SETTINGS"] = str(settings_file)
    return env


class Server:
    """A command in its own process group, its output in a log file."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, grace: float = 30) -> None:
        """SIGTERM the process group; SIGKILL it after ``grace`` seconds."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._file.close()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def wait_until(condition: Callable[[], object], timeout: float, what: str, server=None):
    """Poll ``condition`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if server is not None and server.process.poll() is not None:
            raise AssertionError(f"{what}: server exited\n{server.tail()}")
        time.sleep(1)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f"\n{server.tail()}" if server else "")
    )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
