"""The champion: the loaded model version a request scores with, swapped in whole, the rule
fallback served when there is none (or it cannot score), and the Reloader that follows the
registry alias and the active serving policy without a restart."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from feedback_pipeline.registry.mlflow_registry import Registry
from feedback_pipeline.served_policy import OUTPUT_COLUMNS
from feedback_pipeline.serving.server.config import ServerConfig
from feedback_pipeline.serving.server.protocol import RULE_CONFIDENCE

if TYPE_CHECKING:
    from feedback_pipeline.serving.server.state import ServingState

log = logging.getLogger(__package__)  # one logger for the whole server

# How long shutdown waits for a registry call in flight (MLflow may retry for minutes).
RELOAD_JOIN_SECONDS = 2.0


@dataclass(frozen=True)
class Champion:
    """A loaded version, swapped in whole: a request scores with one consistent champion."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    python_model: Any  # its ProbabilityModel: predict without MLflow's per-call schema check
    version: str
    policy_version: int
    features: tuple[str, ...]
    input_columns: tuple[str, ...]
    loaded_at: datetime

    def score(
        self, columns: dict[str, np.ndarray], rows: int, params: dict | None
    ) -> dict[str, np.ndarray]:
        """The served columns for float ``columns`` (NaN or absent where missing). Without
        params, the model's own array path, ``ProbabilityModel.score`` (the request was
        checked already: numbers, ranges); with params, or for a version logged before that
        path existed, MLflow's ``predict``, which checks params against the signature."""
        score = getattr(self.python_model, "score", None)
        if score is not None and not params:
            return score(columns, rows)
        missing = np.full(rows, np.nan)
        frame = pd.DataFrame({name: columns.get(name, missing) for name in self.input_columns})
        served = self.model.predict(frame, params=params or None)
        return {name: served[name].to_numpy() for name in OUTPUT_COLUMNS}


def _policy_version(python_model: Any) -> int:
    """The version of the policy a loaded model serves: its ``ServingPolicy`` (the policy code
    logged with it), or a plain dict in versions logged before the policy was typed."""
    policy = getattr(python_model, "policy", None)
    if isinstance(policy, dict):
        return int(policy.get("version", 0))
    return int(getattr(policy, "version", 0))


def rule_fallback(rule: np.ndarray) -> dict[str, np.ndarray]:
    """What is served without a model: the caller's ``rule_confidence``, flagged fallback."""
    rows = len(rule)
    return {
        "probability": np.full(rows, np.nan),
        "calibrated": np.full(rows, np.nan),
        "blended_confidence": rule,
        "decision": np.nan_to_num(rule, nan=-1.0) >= 0.5,
        "fallback": np.ones(rows, dtype=bool),
        "policy_version": np.full(rows, None, dtype=object),
    }


class Reloader:
    """Polls the registry for the alias's version and the active policy version; when either
    moves, loads that version and swaps it in. A failed poll or load keeps the old champion.

    The first load runs on this thread too, not before the server binds: an MLflow that does
    not answer (its client retries for minutes) must not keep the port closed. Until a champion
    is loaded every row is served its ``rule_confidence`` and /health says why (``problem``)."""

    def __init__(self, config: ServerConfig, state: ServingState):
        self.config = config
        self.state = state
        self._registry: Registry | None = None
        self._seen: tuple[str, int] | None = None  # (version, policy) last loaded for
        self._failed: tuple[str, int] | str | None = None  # what last failed, logged once
        self.problem: str | None = (
            f"loading {self.config.model_name}@{self.config.alias} from the registry"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; a registry call in flight is not waited for beyond
        ``RELOAD_JOIN_SECONDS`` (the daemon thread ends with the process)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(RELOAD_JOIN_SECONDS)
            if self._thread.is_alive():
                log.warning("a registry call is still running at shutdown; not waiting for it")

    def _run(self) -> None:
        self.check()
        while not self._stop.wait(self.config.reload_interval_seconds):
            self.check()

    def check(self) -> None:
        """One poll; never raises (the server keeps serving whatever it has)."""
        wanted: tuple[str, int] | None = None
        try:
            if self._registry is None:
                self._registry = Registry(
                    self.config.tracking_uri,
                    str(self.config.data_dir / "mlartifacts"),
                    model_name=self.config.model_name,
                )
            version = self._registry.alias_version(self.config.alias)
            if version is None:
                self._note_failure(
                    logging.WARNING,
                    "no alias",
                    f"{self.config.model_name} has no version aliased {self.config.alias!r}; "
                    + ("keeping the loaded one" if self.state.champion else "serving fallback"),
                )
                return
            wanted = (version, self._registry.active_policy_version())
            if wanted != self._seen:
                self.state.swap(self._load(version))
                self._seen, self._failed = wanted, None
            self.problem = None
        except Exception as error:  # a failed reload must never stop serving
            self.state.metrics.errors.labels("reload").inc()
            first_line = (str(error).splitlines() or [""])[0][:300]
            self._note_failure(
                logging.ERROR,
                wanted or "poll",
                f"reload of {self.config.model_name}@{self.config.alias} failed "
                f"({type(error).__name__}: {first_line}); "
                + ("keeping the current champion" if self.state.champion else "serving fallback"),
            )

    def _note_failure(self, level: int, key: tuple[str, int] | str, message: str) -> None:
        self.problem = message
        if key != self._failed:  # log once per cause, not every poll
            log.log(level, message)
            self._failed = key

    def _load(self, version: str) -> Champion:
        """The resolved version, loaded by number: the version reported is the one served even
        if the alias moves again during the load."""
        model = mlflow.pyfunc.load_model(f"models:/{self.config.model_name}/{version}")
        inputs = tuple(model.metadata.get_input_schema().input_names())
        python_model = model.unwrap_python_model()
        champion = Champion(
            model=model,
            python_model=python_model,
            version=str(version),
            policy_version=_policy_version(python_model),
            features=tuple(name for name in inputs if name != RULE_CONFIDENCE),
            input_columns=inputs,
            loaded_at=datetime.now(UTC),
        )
        try:  # one throwaway prediction before it serves, so the first request is not slow
            champion.score({name: np.zeros(1) for name in inputs}, 1, None)
        except Exception:
            log.warning("version %s failed a warm-up prediction", version, exc_info=True)
        log.info(
            "serving %s version %s with policy v%d",
            self.config.model_name,
            champion.version,
            champion.policy_version,
        )
        return champion
