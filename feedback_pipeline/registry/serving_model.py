"""The model code logged with every challenger (MLflow "models from code"): what consumers of
``models:/feedback_model@champion`` run. It imports only the model's own requirements (MLflow,
numpy, pandas, XGBoost or scikit-learn) and ``feedback_pipeline/served_policy.py``, logged as an
artifact of the version (imported under a name of its own), never ``feedback_pipeline``, so the
champion loads wherever those are installed.

On load it reads the active serving policy from the registry (the registered model's
``serving_policy_run_id`` tag names the MLflow run holding ``serving_policy.json``), so applying
or rolling back a policy changes what a fresh load serves without a retrain.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import sys
from collections.abc import Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient


def _import_file(path: str):
    """The module at ``path`` under a name unique to that file, so two versions' policy code
    never share ``sys.modules`` (a plain ``import served_policy`` returns whichever version's
    copy was imported first in this process)."""
    name = f"served_policy_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ProbabilityModel(PythonModel):
    """``predict`` returns, per row: ``probability`` (that a prediction is good), then the
    serving policy's ``calibrated``, ``blended_confidence`` and ``decision``, ``fallback`` (the
    model could not score the row, so ``rule_confidence`` was served) and ``policy_version``.
    ``params={"score_missing": True}`` scores rows with missing features too (the model imputes
    them), as evaluation does; ``fallback_count`` counts fallbacks since load."""

    def load_context(self, context) -> None:
        self.served_policy = _import_file(context.artifacts["served_policy"])
        config = context.model_config
        self.features = list(config["features"])
        self.run_id = config.get("run_id")
        self.fallback_count = 0
        path = context.artifacts["estimator"]
        if config["estimator_format"] == "xgboost_json":  # XGBoost's own, version-safe format
            from xgboost import XGBClassifier

            self.estimator = XGBClassifier()
            self.estimator.load_model(path)
            self.estimator.set_params(n_jobs=1)  # one thread per request: no oversubscription
            self.takes_matrix = True  # XGBoost scores a plain matrix (no pandas conversion)
        else:  # a scikit-learn pipeline, pickled as scikit-learn's own persistence does
            with open(path, "rb") as file:
                self.estimator = pickle.load(file)
            self.takes_matrix = False  # a pipeline fitted on named columns wants them named
        # A ServingPolicy of this version's own policy code (a dict in versions logged before).
        self.policy = self.served_policy.ServingPolicy.from_dict(self._policy_json(config))

    def _policy_json(self, config: dict) -> dict:
        """The active policy's JSON: the published one, else the default logged with the model."""
        policy = config["default_policy"]
        name = config.get("registered_model_name")
        if not name:
            return policy
        try:
            tags = MlflowClient().get_registered_model(name).tags
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return policy
            raise RuntimeError(
                f"could not read the serving policy of registered model {name} from MLflow at "
                f"{mlflow.get_tracking_uri()}: {error}. Check MLFLOW_TRACKING_URI and the "
                "tracking server, then load the model again."
            ) from error
        run_id = tags.get(self.served_policy.POLICY_RUN_TAG)
        if run_id:
            policy = mlflow.artifacts.load_dict(
                f"runs:/{run_id}/{self.served_policy.POLICY_ARTIFACT}"
            )
        return policy

    def score(
        self, columns: Mapping[str, np.ndarray], rows: int, score_missing: bool = False
    ) -> dict[str, np.ndarray]:
        """``predict`` on plain arrays: the request's float ``columns`` (the features and
        ``rule_confidence``; NaN or absent where missing) to the served columns. What
        ``feedback-pipeline serve`` calls per request, with no DataFrame on the way."""
        missing = np.full(rows, np.nan)
        matrix = np.column_stack([columns.get(name, missing) for name in self.features])
        scorable = np.ones(rows, dtype=bool) if score_missing else np.isfinite(matrix).all(axis=1)
        probability = np.full(rows, np.nan)  # float64, whatever the estimator returns
        if scorable.any():
            probability[scorable] = self._probability(matrix[scorable])
        self.fallback_count += int(rows - scorable.sum())
        return self.served_policy.serve_columns(
            columns, probability, scorable, self.policy, self.run_id
        )

    def _probability(self, matrix: np.ndarray) -> np.ndarray:
        X = matrix if self.takes_matrix else pd.DataFrame(matrix, columns=self.features)
        return self.estimator.predict_proba(X)[:, 1]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        names = [*self.features, *self.served_policy.policy_inputs(self.policy)]
        columns = self.served_policy.frame_columns(frame, list(dict.fromkeys(names)))
        score_missing = bool((params or {}).get("score_missing"))
        return pd.DataFrame(self.score(columns, len(frame), score_missing), index=frame.index)


mlflow.models.set_model(ProbabilityModel())
