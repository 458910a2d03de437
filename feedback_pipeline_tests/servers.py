"""Real processes for operations tests: `dagster dev` (webserver + daemon) and the MLflow UI,
on loopback ports of a temp instance, stopped with their whole process group."""

from __future__ import annotations

import os
import re
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
    """A port free now. Another test worker can take it before the caller binds it: uvicorn
    servers bind port 0 themselves (``listening_url``), the others use ``start_on_free_port``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"


def write_dagster_home(home: Path) -> None:
    """The project's own dagster.yaml (run launcher, run monitoring, pools), with every path
    moved inside ``home``: tests run the instance users run. Only the daemon's polls are
    shorter (run monitoring every 2 s, not 10; the run queue every second, not 5), since
    tests wait on them."""
    home.mkdir(parents=True, exist_ok=True)
    text = PROJECT_DAGSTER_YAML.read_text()
    assert text.count("base_dir: data/dagster/") == 3, "dagster.yaml paths moved: update this"
    assert "poll_interval_seconds: 10\n" in text, "run monitoring's poll moved: update this"
    assert "run_coordinator:" not in text, "dagster.yaml sets a run coordinator: update this"
    text = text.replace("base_dir: data/dagster/", f"base_dir: {home}/")
    text = text.replace("poll_interval_seconds: 10\n", "poll_interval_seconds: 2\n")
    text += (
        "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: QueuedRunCoordinator\n  config:\n    dequeue_interval_seconds: 1\n"
    )
    (home / "dagster.yaml").write_text(text)


def without_mlflow_env() -> dict[str, str]:
    """This process's environment less MLflow's variables: a child picks its own store."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def project_env(home: Path, data_dir: Path, settings_file: Path | None = None) -> dict[str, str]:
    env = without_mlflow_env()
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
    """Poll ``condition`` until it returns something truthy; bounded by ``timeout`` seconds.
    Four looks a second: each is a query or a file read, and a wait ends soon after its event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if server is not None and server.process.poll() is not None:
            raise AssertionError(f"{what}: server exited\n{server.tail()}")
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f"\n{server.tail()}" if server else "")
    )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


UVICORN_STARTED = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def listening_url(server: Server, timeout: float = 120) -> str:
    """The URL of ``server``, a uvicorn server started with ``--port 0``: the port the kernel
    picked, read from uvicorn's start line (no other process can take it first)."""

    def started() -> str | None:
        found = UVICORN_STARTED.search(server.tail(10**6))
        return found.group(1) if found else None

    return wait_until(started, timeout, "uvicorn's start line", server)


def start_on_port_zero(
    command: list[str], env: dict[str, str], log: Path, ready: str, timeout: float = 120
) -> tuple[Server, str]:
    """``command`` (a uvicorn server, given ``--port 0``) started and answering ``ready``."""
    server = Server(command, env, log)
    try:
        url = listening_url(server, timeout)
        wait_until(lambda: http_ok(url + ready), timeout, f"{url}{ready}", server)
    except BaseException:
        server.stop()
        raise
    return server, url


def start_on_free_port(
    command: Callable[[int], list[str]],
    env: dict[str, str],
    log: Path,
    ready: str,
    timeout: float = 180,
    attempts: int = 3,
) -> tuple[Server, str]:
    """``command(port)`` on a port from ``free_port``, until ``ready`` answers; started again on
    another port when another process took the first one meanwhile (the server exits saying its
    address is in use)."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        server = Server(command(port), env, log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.process.poll() is None:
            if http_ok(url + ready) and server.process.poll() is None:
                return server, url
            time.sleep(0.2)
        server.stop()
        if attempt < attempts and "address already in use" in server.tail().lower():
            continue
        raise AssertionError(f"{command(port)[0]} did not answer {url}{ready}\n{server.tail()}")
    raise AssertionError("unreachable")
