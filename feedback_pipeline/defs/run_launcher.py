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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # run id -> (pid, the process's start in clock ticks since boot), from its first check:
        # later checks compare ticks, which a wall-clock step does not move.
        self._workers: dict[str, tuple[int, int]] = {}

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        if worker is None:  # RUN_START comes a moment before the executor names its pid
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid recorded yet")
        pid, since = worker
        known = self._workers.get(run.run_id)
        ticks = _start_ticks(pid) if known is not None and known[0] == pid else None
        if ticks is not None:  # compared in ticks, which a wall-clock step does not move
            alive = ticks == known[1]
        else:
            alive = _alive(pid, since)
            ticks = _start_ticks(pid) if alive else None
            if ticks is not None:
                self._workers[run.run_id] = (pid, ticks)
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        self._workers.pop(run.run_id, None)
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


# How much later than its pid event a process may seem to have started and still be the run's
# worker: generous, since /proc's boot time moves with wall-clock steps (NTP, a VM resume).
START_SLACK_SECONDS = 60.0


def _alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` exists and is the one that was running at ``since`` (a pid the
    kernel gave to a newer process after the worker died does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    ticks = _start_ticks(pid)
    if ticks == ZOMBIE:
        return False
    boot = _boot_time()
    if ticks is None or boot is None:
        return True
    return boot + ticks / CLOCK_TICKS <= since + START_SLACK_SECONDS


ZOMBIE = -1  # an exited process its parent has not reaped yet: nothing runs there any more


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (from /proc; None without it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ZOMBIE if fields[0] == "Z" else int(fields[19])


def _boot_time() -> float | None:
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    return next((float(line.split()[1]) for line in lines if line.startswith("btime ")), None)
