"""Asset values passed between steps, stored per run so that two runs never read each other's.

Dagster's default filesystem IO manager keeps one file per asset key, shared by every run: two
retrains at once overwrite each other's ``evaluation_report`` and one promotes on the other's
numbers. Here each run writes under ``<base_dir>/runs/<run_id>/``; a step reads its upstream
from the run that produced it (this run, a re-executed parent run, or, when the upstream is not
selected in this run, the run of its latest materialization)."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg


class RunScopedPickleIOManager(dg.IOManager):
    """Pickles each asset value to ``<base_dir>/runs/<run_id>/<asset key path>``."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir

    def path_for(self, run_id: str, asset_key: dg.AssetKey) -> Path:
        return self.base_dir.joinpath("runs", run_id, *asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self.path_for(context.run_id, context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                pickle.dump(obj, file, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)  # a killed step leaves no half-written value behind
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        context.add_output_metadata({"stored_at": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        path = self.stored_path(context)
        if path is None:
            name = context.asset_key.to_user_string()
            raise FileNotFoundError(
                f"no stored value of asset {name!r} under {self.base_dir / 'runs'}: "
                f"materialize {name} (or the whole job) first, then rerun"
            )
        with path.open("rb") as file:
            return pickle.load(file)

    def stored_path(self, context: dg.InputContext) -> Path | None:
        """The upstream value this step must read: the one its own run (or the parent of a
        re-execution) built, else, when the upstream is not part of this run, the latest one."""
        upstream = context.upstream_output
        if upstream is not None:
            try:
                own = self.path_for(upstream.run_id, context.asset_key)
            except dg.DagsterInvariantViolationError:
                own = None
            if own is not None and own.exists():
                return own
        event = context.instance.get_latest_materialization_event(context.asset_key)
        if event is None:
            return None
        latest = self.path_for(event.run_id, context.asset_key)
        return latest if latest.exists() else None


def prune_finished_runs(
    base_dir: Path, instance: dg.DagsterInstance, keep_seconds: float
) -> list[str]:
    """Delete the stored values of runs that ended more than ``keep_seconds`` ago and hold no
    asset's latest materialization (which a run of downstream assets alone would read)."""
    runs_dir = base_dir / "runs"
    if not runs_dir.is_dir():
        return []
    stored = {path.name: path for path in runs_dir.iterdir() if path.is_dir()}
    records = instance.get_run_records(dg.RunsFilter(run_ids=list(stored))) if stored else []
    ended_before = time.time() - keep_seconds
    finished = {
        record.dagster_run.run_id
        for record in records
        if record.dagster_run.is_finished
        and record.end_time is not None
        and record.end_time < ended_before
    }
    if not finished:
        return []
    asset_keys = {
        dg.AssetKey(list(path.relative_to(stored[run_id]).parts))
        for run_id in finished
        for path in stored[run_id].rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }
    latest = instance.get_latest_materialization_events(list(asset_keys))
    holding_latest = {event.run_id for event in latest.values() if event is not None}
    pruned = sorted(finished - holding_latest)
    for run_id in pruned:
        shutil.rmtree(stored[run_id], ignore_errors=True)
    return pruned


class RunScopedIOManager(dg.ConfigurableIOManagerFactory):
    """The project's IO manager; ``base_dir`` defaults to the Dagster instance's storage folder.

    Each run's values stay while the run may be re-executed (``keep_days`` after it ended) or
    while they are an asset's latest materialization; older ones are deleted when a run starts."""

    base_dir: str | None = None
    keep_days: float = 1.0

    def create_io_manager(self, context: dg.InitResourceContext) -> RunScopedPickleIOManager:
        base_dir = Path(self.base_dir or context.instance.storage_directory())
        pruned = prune_finished_runs(base_dir, context.instance, self.keep_days * 86400)
        if pruned and context.log is not None:
            context.log.info(f"deleted the stored asset values of {len(pruned)} ended run(s)")
        return RunScopedPickleIOManager(base_dir)
