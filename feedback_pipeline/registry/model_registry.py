"""What every model registry offers the retrain path, and the names it uses: MLflow's
(``mlflow_registry.Registry``) live, a backtest's folder (``backtest.replay_registry``) in a
replay. Nothing here imports MLflow, so the code location and the stage modules that only name
the registry load without it (MLflow is imported where a registry is opened)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

MODEL_NAME = "feedback_model"
EXPERIMENT = "feedback_pipeline"
CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryUnavailable(RuntimeError):
    """MLflow could not answer (server down, store unreadable): never read as "not found"."""

    def __init__(self, tracking_uri: str, error: Exception):
        super().__init__(
            f"MLflow at {tracking_uri} did not answer: {str(error).splitlines()[0][:300]}. "
            "Check that the tracking server is up and MLFLOW_TRACKING_URI is right, then rerun; "
            "nothing was promoted."
        )


@dataclass(frozen=True)
class RegisteredChallenger:
    version: str
    run_id: str
    family: str


@runtime_checkable
class ModelRegistry(Protocol):
    """What the retrain code path (challengers, evaluation, gate, refit, aliases) needs of a
    registry: MLflow's (``Registry``) live, a backtest's folder (``ReplayRegistry``) in a replay."""

    model_name: str
    lean: bool  # True: skip model cards, reports and plots (nobody reads them there)

    def start_package_scan(self) -> None: ...
    def log_challenger(
        self,
        estimator: Any,
        family: str,
        features: list[str],
        example: pd.DataFrame,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        model_card: str,
    ) -> RegisteredChallenger: ...
    def find_version(self, tag: str, value: str) -> RegisteredChallenger | None: ...
    def alias_version(self, alias: str) -> str | None: ...
    def set_alias(self, alias: str, version: str) -> None: ...
    def clear_alias(self, alias: str) -> None: ...
    def version_tags(self, version: str) -> dict[str, str]: ...
    def tag_version(self, version: str, key: str, value: str) -> None: ...
    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None: ...
    def run_metrics(self, version: str) -> dict[str, float]: ...
    def log_text(self, run_id: str, text: str, path: str) -> None: ...
    def log_report(self, run_id: str, report_json: str, markdown: str, figures: dict) -> None: ...
    def run_id(self, version: str) -> str: ...
    def versions(self) -> list[str]: ...
    def predict_probability(self, version: str, X: pd.DataFrame) -> pd.Series: ...


def default_tracking_uri(data_dir: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else a sqlite store in the data directory."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    )
