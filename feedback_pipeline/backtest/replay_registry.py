"""The registry a replay writes its policies' versions to: a folder, not MLflow.

A backtest registers two versions per policy and period (a candidate and its refit), hundreds
in all, that nobody opens in the MLflow UI; with MLflow each costs a run, a model log, a
registration and a load (about 0.3 s, more than a small stream's whole refit). This registry has
the interface the retrain code path uses (log, find by tag, aliases, tags, metrics, scoring), so
the replay runs the live code path unchanged and trains the very same models; it keeps each
version as a pickle and the aliases as JSON in the backtest's folder, written atomically, so a
stopped replay resumes from them. The backtest's summary still goes to MLflow.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedback_pipeline.registry.mlflow_registry import RegisteredChallenger

ALIASES = "aliases.json"


@dataclass
class ReplayVersion:
    estimator: Any
    features: list[str]
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


class ReplayRegistry:
    """Versions ``1, 2, ...`` of ``model_name`` under ``folder`` (one pickle each); a
    ``ModelRegistry``, as MLflow's ``Registry`` is."""

    lean = True  # evaluation skips model cards, reports and plots: nobody reads them here

    def __init__(self, folder: Path, model_name: str):
        self.folder = folder
        self.model_name = model_name
        folder.mkdir(parents=True, exist_ok=True)
        self._versions: dict[str, ReplayVersion] = {}

    def _path(self, version: str) -> Path:
        return self.folder / f"v{int(version)}.pkl"

    def _version(self, version: str) -> ReplayVersion:
        if version not in self._versions:
            path = self._path(version)
            if not path.exists():
                raise KeyError(f"{self.model_name}: no version {version} in {self.folder}")
            self._versions[version] = pickle.loads(path.read_bytes())
        return self._versions[version]

    def _save(self, version: str, record: ReplayVersion) -> None:
        _write_atomically(self._path(version), pickle.dumps(record))
        self._versions[version] = record

    def versions(self) -> list[str]:
        return sorted((p.stem[1:] for p in self.folder.glob("v*.pkl")), key=int)

    def start_package_scan(self) -> None:
        """Nothing to prepare: no model is logged to MLflow."""

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
    ) -> RegisteredChallenger:
        """A new version holding the fitted estimator, its params, metrics and tags."""
        existing = self.versions()
        version = str(int(existing[-1]) + 1 if existing else 1)
        record = ReplayVersion(
            estimator, list(features), {**tags, "family": family}, dict(params), dict(metrics)
        )
        self._save(version, record)
        return RegisteredChallenger(version, self.run_id(version), family)

    def find_version(self, tag: str, value: str) -> RegisteredChallenger | None:
        for version in reversed(self.versions()):
            tags = self._version(version).tags
            if tags.get(tag) == value:
                return RegisteredChallenger(version, self.run_id(version), tags.get("family", ""))
        return None

    def run_id(self, version: str) -> str:
        """A version's "run" is the version itself: its metrics live with it."""
        return f"{self.model_name}/v{int(version)}"

    def _aliases(self) -> dict[str, str]:
        path = self.folder / ALIASES
        return json.loads(path.read_text()) if path.exists() else {}

    def alias_version(self, alias: str) -> str | None:
        return self._aliases().get(alias)

    def set_alias(self, alias: str, version: str) -> None:
        self._version(version)  # an alias names a version that exists
        _write_atomically(
            self.folder / ALIASES, json.dumps({**self._aliases(), alias: version}).encode()
        )

    def clear_alias(self, alias: str) -> None:
        aliases = self._aliases()
        if aliases.pop(alias, None) is not None:
            _write_atomically(self.folder / ALIASES, json.dumps(aliases).encode())

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self._version(version).tags)

    def tag_version(self, version: str, key: str, value: str) -> None:
        record = self._version(version)
        record.tags[key] = value
        self._save(version, record)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        version = run_id.rsplit("/v", 1)[1]
        record = self._version(version)
        record.metrics.update({k: v for k, v in metrics.items() if np.isfinite(v)})
        self._save(version, record)

    def run_metrics(self, version: str) -> dict[str, float]:
        return dict(self._version(version).metrics)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """Model cards and reports are for people reading MLflow; a replay keeps none."""

    def log_report(self, run_id: str, report_json: str, markdown: str, figures: dict) -> None:
        """As ``log_text``: nothing to keep."""

    def predict_probability(self, version: str, X: pd.DataFrame) -> pd.Series:
        """The estimator's probability on the version's features, as the served model scores
        rows with ``score_missing`` (missing values go to the estimator, which handles them)."""
        record = self._version(version)
        matrix = X.reindex(columns=record.features).to_numpy(dtype=np.float64)
        frame = pd.DataFrame(matrix, columns=record.features)
        probability = record.estimator.predict_proba(frame)[:, 1].astype(np.float64)
        return pd.Series(probability, index=X.index)  # float64, as the served model returns
