"""The registry a replay writes its policies' versions to: a folder, not MLflow.

A backtest registers two versions per policy and period (a candidate and its refit), hundreds
in all, that nobody opens in the MLflow UI; with MLflow each costs a run, a model log, a
registration and a load (about 0.3 s, more than a small stream's whole refit). This registry has
the interface the retrain code path uses (log, find by tag, aliases, tags, metrics, scoring), so
the replay runs the live code path unchanged and trains the very same models; it keeps each
version as a pickle and a JSON record, and the aliases as JSON, in the backtest's folder,
written atomically, so a stopped replay resumes from them. The backtest's summary still goes
to MLflow.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feedback_pipeline.registry.model_registry import RegisteredChallenger

ALIASES = "aliases.json"
LOADED_ESTIMATORS = 4  # a replay period scores the champion, a candidate and its refit


@dataclass
class VersionRecord:
    """A version's metadata, kept apart from its estimator: tags and metrics change after
    registration and lookups by tag read every version, neither needs the model."""

    features: list[str]
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


class ReplayRegistry:
    """Versions ``1, 2, ...`` of ``model_name`` under ``folder`` (each an estimator pickle and
    a JSON record, the record written last: a version exists once its record does); a
    ``ModelRegistry``, as MLflow's ``Registry`` is. Records are cached; estimators only the
    last few loaded, so memory stays flat over hundreds of versions."""

    lean = True  # evaluation skips model cards, reports and plots: nobody reads them here

    def __init__(self, folder: Path, model_name: str):
        self.folder = folder
        self.model_name = model_name
        folder.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, VersionRecord] = {}
        self._estimators: dict[str, Any] = {}

    def _record_path(self, version: str) -> Path:
        return self.folder / f"v{int(version)}.json"

    def _estimator_path(self, version: str) -> Path:
        return self.folder / f"v{int(version)}.pkl"

    def _record(self, version: str) -> VersionRecord:
        if version not in self._records:
            path = self._record_path(version)
            if not path.exists():
                raise KeyError(f"{self.model_name}: no version {version} in {self.folder}")
            self._records[version] = VersionRecord(**json.loads(path.read_text()))
        return self._records[version]

    def _save_record(self, version: str, record: VersionRecord) -> None:
        data = json.dumps(asdict(record), default=lambda value: value.item())  # numpy scalars
        _write_atomically(self._record_path(version), data.encode())
        self._records[version] = record

    def _estimator(self, version: str) -> Any:
        if version not in self._estimators:
            self._record(version)  # a version without its record does not exist
            self._estimators[version] = pickle.loads(self._estimator_path(version).read_bytes())
            while len(self._estimators) > LOADED_ESTIMATORS:
                self._estimators.pop(next(iter(self._estimators)))
        return self._estimators[version]

    def versions(self) -> list[str]:
        return sorted((p.stem[1:] for p in self.folder.glob("v*.json")), key=int)

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
        _write_atomically(self._estimator_path(version), pickle.dumps(estimator))
        record = VersionRecord(
            list(features), {**tags, "family": family}, dict(params), dict(metrics)
        )
        self._save_record(version, record)
        return RegisteredChallenger(version, self.run_id(version), family)

    def find_version(self, tag: str, value: str) -> RegisteredChallenger | None:
        for version in reversed(self.versions()):
            tags = self._record(version).tags
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
        self._record(version)  # an alias names a version that exists
        _write_atomically(
            self.folder / ALIASES, json.dumps({**self._aliases(), alias: version}).encode()
        )

    def clear_alias(self, alias: str) -> None:
        aliases = self._aliases()
        if aliases.pop(alias, None) is not None:
            _write_atomically(self.folder / ALIASES, json.dumps(aliases).encode())

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self._record(version).tags)

    def tag_version(self, version: str, key: str, value: str) -> None:
        record = self._record(version)
        self._save_record(version, replace(record, tags={**record.tags, key: value}))

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        version = run_id.rsplit("/v", 1)[1]
        record = self._record(version)
        finite = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        self._save_record(version, replace(record, metrics={**record.metrics, **finite}))

    def run_metrics(self, version: str) -> dict[str, float]:
        return dict(self._record(version).metrics)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """Model cards and reports are for people reading MLflow; a replay keeps none."""

    def log_report(self, run_id: str, report_json: str, markdown: str, figures: dict) -> None:
        """As ``log_text``: nothing to keep."""

    def predict_probability(self, version: str, X: pd.DataFrame) -> pd.Series:
        """The estimator's probability on the version's features, as the served model scores
        rows with ``score_missing`` (missing values go to the estimator, which handles them)."""
        features = self._record(version).features
        matrix = X.reindex(columns=features).to_numpy(dtype=np.float64)
        frame = pd.DataFrame(matrix, columns=features)
        probability = self._estimator(version).predict_proba(frame)[:, 1].astype(np.float64)
        return pd.Series(probability, index=X.index)  # float64, as the served model returns
