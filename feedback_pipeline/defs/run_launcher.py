"""Dagster's default run launcher, plus a health check that notices a dead run worker.

With run monitoring on (``dagster.yaml``), the daemon asks the run launcher every
``poll_interval_seconds`` whether each STARTED run's worker is alive. Dagster's
``DefaultRunLauncher`` cannot answer, so a run whose process was killed (``kill -9``, an OOM
kill, a reboot that took the code server with it, or a ``dagster job execute`` process) stayed
STARTED forever and held the warehouse pool's one slot: every later run queued behind it.

This launcher answers from the run's own event log: the first engine event that names a
process id (the run worker's "Started process for run (pid: N)", or the executor's "Executing
steps ... (pid: N)" for a run executed in the CLI) and whether that process still lives on this
machine. When it is gone, run monitoring marks the run failed, which frees its pool slot and
sends ``retrain_failure_sensor`` to ledger it. It suits the local deployment, where the daemon,
the code server and the runs share one machine; a multi-machine deployment uses its launcher's
own health check (k8s, Docker, ECS).
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterEventType, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LocalRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` that tells run monitoring when a run's process has died."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        if worker is None:  # not started far enough to say: the start timeout covers it
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run worker recorded yet")
        pid, since = worker
        if _alive(pid, since):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run's process (pid {pid}) is gone: killed or crashed without reporting; "
            "the run is marked failed so the runs queued behind it can start",
        )


def run_worker(instance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's orchestrating process and when it said so (epoch seconds)."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None and data.metadata else None
        if pid is not None:
            return int(pid.value), record.timestamp
    return None


def _alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` exists and is the one that was running at ``since`` (a pid the
    kernel gave to a newer process after the worker died does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    started = _process_start_time(pid)
    return started is None or started <= since + 1.0


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds the process started, from /proc (None where /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    # Fields after the command name (which may hold spaces) start at the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited: nothing runs there any more
        return float("inf")
    return boot + int(fields[19]) / CLOCK_TICKS
