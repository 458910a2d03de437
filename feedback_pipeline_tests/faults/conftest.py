"""The retrain-loop fault tests' workspace: a private copy of the championed data dir (built
once per test session) with a fresh Dagster home."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from feedback_pipeline_tests.servers import write_dagster_home


@pytest.fixture
def workspace(championed_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the championed data dir and a fresh Dagster home (the project's
    dagster.yaml)."""
    data_dir = championed_dir
    home = tmp_path / "home"
    write_dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Create the sqlite storages now: two CLI processes that both create them at once
        # collide in Dagster's migrations ("table alembic_version already exists").
        instance.get_runs()
        instance.get_latest_materialization_event(dg.AssetKey("training_set"))
        instance.all_instigator_state()
    return data_dir, home
