"""MLflow: every challenger is a run and a version of ``feedback_model``.

Models are logged as a small pyfunc that returns the probability that a prediction is good, so
every family loads and predicts the same way: ``models:/feedback_model@champion``. The pyfunc is
logged as code (``serving_model.py``) beside the fitted estimator, so loading it needs only the
model's requirements, not this package and not MLflow's pickling of a Python object.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import threading
import warnings
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils import requirements_utils

from feedback_pipeline import served_policy
from feedback_pipeline.metrics import predict_probability
from feedback_pipeline.registry.model_registry import (
    EXPERIMENT,
    MODEL_NAME,
    RegisteredChallenger,
    RegistryUnavailable,
    default_tracking_uri,
)
from feedback_pipeline.served_policy import (
    POLICY_ARTIFACT,
    POLICY_RUN_TAG,
    POLICY_VERSION_TAG,
    ServingPolicy,
    serve,
)
from feedback_pipeline.settings import MlflowSettings, SettingsError, load_settings


def _not_found(error: MlflowException) -> bool:
    return error.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
        error.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(error).lower()
    )


def _requirements() -> list[str]:
    names = ("mlflow", "pandas", "scikit-learn", "xgboost")
    return [f"{name}=={package_version(name)}" for name in names]


# Logged with every model: the code MLflow runs to load and score it (see serving_model.py)
# and the policy code it applies (served_policy.py, a leaf module that imports nothing of ours).
SERVING_MODEL_CODE = Path(__file__).with_name("serving_model.py")
SERVED_POLICY_CODE = Path(served_policy.__file__)


OUTPUT_TYPES = {
    "probability": "double",
    "calibrated": "double",
    "blended_confidence": "double",
    "decision": "boolean",
    "fallback": "boolean",
    "policy_version": "long",
}


def serving_signature(features: list[str], served: pd.DataFrame) -> ModelSignature:
    """Every feature and ``rule_confidence`` optional, so a row missing one reaches the model
    (which falls back to ``rule_confidence``) instead of failing MLflow's schema check."""
    inputs = Schema(
        [ColSpec("double", name, required=False) for name in [*features, "rule_confidence"]]
    )
    return ModelSignature(
        inputs=inputs,
        outputs=Schema([ColSpec(OUTPUT_TYPES[name], name) for name in served.columns]),
        params=ParamSchema([ParamSpec("score_missing", "boolean", False)]),
    )


def _save_estimator(estimator: Any, folder: Path) -> tuple[Path, str]:
    """The fitted estimator as a file: XGBoost in its own JSON format, scikit-learn pickled."""
    from xgboost import XGBClassifier

    if isinstance(estimator, XGBClassifier):
        path = folder / "estimator.json"
        estimator.save_model(path)
        return path, "xgboost_json"
    path = folder / "estimator.pkl"
    with path.open("wb") as file:
        pickle.dump(estimator, file)
    return path, "pickle"


# The variables that name the MLflow stores; MLflow sets them when its global URIs change.
URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

# MLflow's HTTP client settings, read from the environment on every request.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "http_timeout_seconds",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "http_max_retries",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "http_backoff_factor",
}
# Which of them we set (so a child process, which inherits them, still knows they are ours).
OWNED_HTTP_ENV = "FEEDBACK_PIPELINE_MLFLOW_HTTP_ENV"
# The ones the user set before any of our processes touched them: those win over our settings.
_USER_HTTP_ENV = frozenset(
    name
    for name in HTTP_ENV
    if name in os.environ and name not in os.environ.get(OWNED_HTTP_ENV, "").split(",")
)


def configure_mlflow_http(http: MlflowSettings | None = None) -> None:
    """Give MLflow's HTTP client our timeout and retries (``mlflow`` settings; the deployment
    file's by default), so an unreachable tracking server fails a command in seconds instead
    of MLflow's ~4 minutes of retries. Variables the user exported are left as they are. A bad
    settings file is the run's to report (it fails there, naming the field): here it falls
    back to the defaults, so a sensor or the server never breaks on it."""
    if http is None:
        try:
            http = load_settings().mlflow
        except SettingsError as error:
            warnings.warn(f"MLflow HTTP settings: defaults used ({error})", stacklevel=2)
            http = MlflowSettings()
    owned = [name for name in HTTP_ENV if name not in _USER_HTTP_ENV]
    for name in owned:
        os.environ[name] = str(getattr(http, HTTP_ENV[name]))
    os.environ[OWNED_HTTP_ENV] = ",".join(owned)


class Registry:
    """The MLflow tracking store and model registry."""

    lean = False  # the full record (a backtest's replay registry keeps only what it reads)

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str,
        model_name: str = MODEL_NAME,
        experiment: str = EXPERIMENT,
        http: MlflowSettings | None = None,
    ):
        """``model_name`` and ``experiment`` default to the live ones; the backtest uses its own,
        so the live ``champion`` alias never moves. ``http``: MLflow's timeout and retries
        (default: the deployment settings' ``mlflow`` section)."""
        configure_mlflow_http(http)
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.model_name = model_name
        self.experiment = experiment
        # MLflow's fluent calls (log_model) use the global URIs; MLflow also exports them to
        # the environment, where ``default_tracking_uri`` would then mistake this store for
        # one the user chose: the next registry of another data directory in this process
        # would open this one. The user's variables are put back as they were.
        chosen = {name: os.environ.get(name) for name in URI_ENV}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        for name, value in chosen.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._package_scan: threading.Thread | None = None

    def start_package_scan(self) -> None:
        """Start, on a background thread, the scan of installed packages that MLflow makes once
        per process before it logs the first model (about 0.6 s), so it overlaps training.

        It calls a private MLflow function; if that is gone, ``log_model`` scans as before.
        """
        scan = getattr(requirements_utils, "_init_packages_to_modules_map", None)
        if scan is not None and self._package_scan is None:
            self._package_scan = threading.Thread(target=scan, name="mlflow-package-scan")
            self._package_scan.start()

    def experiment_id(self) -> str:
        return self._experiment_id(self.experiment)

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(
            name, artifact_location=Path(self.artifact_root).resolve().as_uri()
        )

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
        """One run with params, metrics, tags, model card and model; a new registered version."""
        if self._package_scan is not None:
            self._package_scan.join()  # MLflow's package map is complete before it is read
        example = example[features].astype("float64").head(5)
        probability = predict_probability(estimator, example)
        served = serve(example, probability, np.ones(len(example), bool), ServingPolicy(), None)
        with (
            mlflow.start_run(
                experiment_id=self.experiment_id(), run_name=f"{family}-{tags.get('as_of', '')}"
            ) as run,
            tempfile.TemporaryDirectory() as folder,
        ):
            mlflow.log_params({k: _param(v) for k, v in params.items()})
            mlflow.log_metrics({k: v for k, v in metrics.items() if _finite(v)})
            mlflow.set_tags(tags)
            mlflow.log_text(model_card, "model_card.md")
            estimator_file, estimator_format = _save_estimator(estimator, Path(folder))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVING_MODEL_CODE),
                # The policy code travels as an artifact of this version and is imported
                # under a name of its own: a process that loads several versions (a server
                # across alias moves, the backtest) never runs one version's model with
                # another's policy code.
                artifacts={
                    "estimator": str(estimator_file),
                    "served_policy": str(SERVED_POLICY_CODE),
                },
                model_config={
                    "features": list(features),
                    "estimator_format": estimator_format,
                    "run_id": run.info.run_id,  # a policy's calibration is for one model
                    "registered_model_name": self.model_name,  # where the policy is read
                    "default_policy": ServingPolicy().to_dict(),
                },
                signature=serving_signature(features, served),
                input_example=example,
                pip_requirements=_requirements(),
            )
        # Registered with every tag in one call: a kill before it leaves an unregistered run
        # (never served, never reused), a kill after it a complete version that the rerun
        # finds by its fit_key. Tagging after registering left half-tagged orphans.
        registered = mlflow.register_model(
            info.model_uri, self.model_name, tags={**tags, "family": family}
        )
        version = str(registered.version)
        return RegisteredChallenger(version, run.info.run_id, family)

    def find_version(self, tag: str, value: str) -> RegisteredChallenger | None:
        """The newest version carrying ``tag=value`` (e.g. the same fit key), if any: one
        filtered query, not a scan of every version."""
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' AND tags.`{tag}` = '{value}'",
            max_results=1,
            order_by=["version_number DESC"],
        )
        if not found:
            return None
        model_version = found[0]
        family = model_version.tags.get("family", "")
        return RegisteredChallenger(str(model_version.version), model_version.run_id, family)

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at; None only when MLflow says it does not exist.

        Any other MLflow error (an unreachable server, a broken store) is raised as a
        RegistryUnavailable: a failed lookup must never look like "no champion yet", which
        would send a retrain down the cold-start path."""
        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as error:
            if _not_found(error):
                return None
            raise RegistryUnavailable(self.tracking_uri, error) from error

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def run_id(self, version: str) -> str:
        return self.client.get_model_version(self.model_name, version).run_id

    def run_metrics(self, version: str) -> dict[str, float]:
        return dict(self.client.get_run(self.run_id(version)).data.metrics)

    def versions(self) -> list[str]:
        try:
            found = self.client.search_model_versions(f"name = '{self.model_name}'")
        except MlflowException as error:
            raise RegistryUnavailable(self.tracking_uri, error) from error
        return sorted((str(v.version) for v in found), key=int)

    def load(self, version: str) -> mlflow.pyfunc.PyFuncModel:
        return mlflow.pyfunc.load_model(f"models:/{self.model_name}/{version}")

    def predict_probability(self, version: str, X: pd.DataFrame) -> pd.Series:
        """The model's own probability on every row (it imputes missing features), as
        evaluation needs; serving falls back on such rows instead."""
        return self.load(version).predict(X, params={"score_missing": True})["probability"]

    def publish_policy(
        self, policy: ServingPolicy, experiment: str = "feedback_pipeline_policies"
    ) -> str:
        """Log ``policy`` as an MLflow run's ``serving_policy.json`` and point the registered
        model's tags at it: every fresh load of the model serves it. Returns the run id.

        An MLflow that fails before the first tag is written leaves what is served as it was
        (a logged run no tag points at is never read) and raises RegistryUnavailable."""
        try:
            experiment_id = self._experiment_id(experiment)
            run = self.client.create_run(
                experiment_id, run_name=f"serving-policy-v{policy.version}"
            )
            self.client.log_dict(run.info.run_id, policy.to_dict(), POLICY_ARTIFACT)
            self.client.log_param(run.info.run_id, "policy_version", policy.version)
            self.client.set_terminated(run.info.run_id)
            self.client.set_registered_model_tag(self.model_name, POLICY_RUN_TAG, run.info.run_id)
            self.client.set_registered_model_tag(
                self.model_name, POLICY_VERSION_TAG, str(policy.version)
            )
        except MlflowException as error:
            raise RegistryUnavailable(self.tracking_uri, error) from error
        return run.info.run_id

    def clear_policy(self) -> None:
        """Back to the default policy (version 0) for every fresh load."""
        for tag in (POLICY_RUN_TAG, POLICY_VERSION_TAG):
            try:
                self.client.delete_registered_model_tag(self.model_name, tag)
            except MlflowException as error:
                if not _not_found(error):
                    raise RegistryUnavailable(self.tracking_uri, error) from error

    def active_policy_version(self) -> int:
        """The policy version fresh loads serve (0: the default)."""
        try:
            tags = self.client.get_registered_model(self.model_name).tags
        except MlflowException as error:
            if _not_found(error):
                return 0
            raise RegistryUnavailable(self.tracking_uri, error) from error
        return int(tags.get(POLICY_VERSION_TAG, 0))

    def clear_alias(self, alias: str) -> None:
        """Remove ``alias`` (nothing to do when it, or the model, does not exist)."""
        try:
            self.client.delete_registered_model_alias(self.model_name, alias)
        except MlflowException as error:
            if not _not_found(error):
                raise RegistryUnavailable(self.tracking_uri, error) from error

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def tag_version(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, version, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if _finite(value):
                self.client.log_metric(run_id, key, value)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_report(self, run_id: str, report_json: str, markdown: str, figures: dict) -> None:
        self.client.log_text(run_id, report_json, "evaluation/report.json")
        self.client.log_text(run_id, markdown, "evaluation/report.md")
        for name, figure in figures.items():
            self.client.log_figure(run_id, figure, f"evaluation/{name}.png")


def local_registry(data_dir: Path, **names: str) -> Registry:
    """The data directory's registry (``model_name``/``experiment`` may name other ones)."""
    return Registry(default_tracking_uri(data_dir), str(data_dir / "mlartifacts"), **names)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


def _param(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)
