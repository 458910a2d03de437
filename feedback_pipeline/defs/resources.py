"""Every outside system behind a ConfigurableResource, with a local (embedded) variant."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import duckdb

from feedback_pipeline.defs.io_manager import RunScopedIOManager
from feedback_pipeline.defs.run_context import RunContextResource
from feedback_pipeline.registry.model_registry import EXPERIMENT, default_tracking_uri
from feedback_pipeline.settings import SETTINGS_ENV_VAR
from feedback_pipeline.warehouse import connection as warehouse

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (``$DATA_DIR/warehouse.duckdb``)."""

    path: str

    @contextmanager
    def connect(
        self, read_only: bool = False, lock_timeout: float = 120.0
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; waits up to ``lock_timeout`` s while another process holds the file."""
        con = warehouse.connect(self.path, read_only=read_only, lock_timeout=lock_timeout)
        try:
            yield con
        finally:
            con.close()


class LandingZoneResource(dg.ConfigurableResource):
    """Where files land: ``<path>/{predictions,feedback,baseline}/``."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class ServingLogResource(dg.ConfigurableResource):
    """Where ``feedback-pipeline serve`` logs its requests (``requests-YYYYMMDD.jsonl``)."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class MlflowRegistryResource(dg.ConfigurableResource):
    """MLflow tracking store and model registry (``MLFLOW_TRACKING_URI`` or local sqlite)."""

    tracking_uri: str
    artifact_root: str

    def get_registry(self, experiment: str = EXPERIMENT) -> Registry:
        """The registry, MLflow imported here: loading the code location does not need it."""
        from feedback_pipeline.registry.mlflow_registry import Registry

        return Registry(self.tracking_uri, self.artifact_root, experiment=experiment)


def local_resources(
    data_dir: Path,
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManagerFactory]:
    """The embedded defaults: everything under one data directory."""
    return {
        "io_manager": RunScopedIOManager(),
        "warehouse": WarehouseResource(path=str(data_dir / "warehouse.duckdb")),
        "landing_zone": LandingZoneResource(path=str(data_dir / "landing")),
        "serving_log": ServingLogResource(path=str(data_dir / "serving")),
        "run_context": RunContextResource(settings_file=os.environ.get(SETTINGS_ENV_VAR) or None),
        "mlflow_registry": MlflowRegistryResource(
            tracking_uri=default_tracking_uri(data_dir),
            artifact_root=str(data_dir / "mlartifacts"),
        ),
    }
