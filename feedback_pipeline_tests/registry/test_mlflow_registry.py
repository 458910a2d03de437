"""What consumers load: a registered version runs with only the model's requirements installed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.splits import Split
from feedback_pipeline_tests.conftest import with_mlflow_store

FEATURES = ["momentum", "rsi", "gap"]

# A consumer's process: no feedback_pipeline to import, and MLflow refuses pickled Python models.
CONSUMER = """
import json, sys
sys.modules["feedback_pipeline"] = None  # any import of this package now fails
import mlflow
import pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
rows = pd.read_json(sys.argv[2], orient="split")
for uri in sys.argv[3:]:  # one line of output per model
    print(mlflow.pyfunc.load_model(uri).predict(rows).to_json(orient="split"))
"""
FAMILIES = ("xgboost", "logistic_regression", "random_forest")


def training_split(rows: int = 300) -> Split:
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    X.loc[::7, "rsi"] = np.nan  # missing features reach the model as NaN
    y = (X["momentum"] + rng.normal(scale=0.7, size=rows) > 0).astype(np.int64).to_numpy()
    times = np.full(rows, np.datetime64("2026-01-01"), "datetime64[us]")
    return Split(X, y, np.ones(rows), times, times)


def fitted(family: str) -> tuple[Any, Split]:
    """``family`` fitted with the default settings on ``training_split``, and that split."""
    settings = Settings()
    train = training_split()
    params = settings.models.hyperparameters.for_family(family)
    return fit(family, params, train, settings.models.seed), train


def test_registered_versions_load_where_feedback_pipeline_is_not_installed(tmp_path):
    """Each family's version, loaded in one fresh process that cannot import this package."""
    registry = local_registry(with_mlflow_store(tmp_path))
    fits = {family: fitted(family) for family in FAMILIES}
    versions = {
        family: registry.log_challenger(
            estimator, family, FEATURES, train.X, {"family": family}, {}, {}, "# card"
        ).version
        for family, (estimator, train) in fits.items()
    }
    train = training_split()
    # The consumer sends extra columns in another order; the model picks its features by name.
    rows = train.X.head(20).assign(unrelated=1.0)[["gap", "unrelated", "rsi", "momentum"]]
    rows_file = tmp_path / "rows.json"
    rows.to_json(rows_file, orient="split")
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CONSUMER,
            registry.tracking_uri,
            str(rows_file),
            *(f"models:/feedback_model/{versions[family]}" for family in FAMILIES),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = done.stdout.strip().splitlines()[-len(FAMILIES) :]
    # A row missing a feature is not scored: it falls back (to rule_confidence, absent here).
    missing = train.X.head(20).isna().any(axis=1).to_numpy()
    assert missing.any()
    for family, output in zip(FAMILIES, outputs, strict=True):
        served = pd.read_json(io.StringIO(output), orient="split")
        expected = fits[family][0].predict_proba(train.X.head(20))[:, 1]
        assert served["fallback"].to_numpy().tolist() == missing.tolist(), family
        assert served.loc[missing, "probability"].isna().all(), family
        np.testing.assert_allclose(
            served.loc[~missing, "probability"], expected[~missing], rtol=1e-6, atol=1e-7
        )
        # No policy applied yet: version 0, calibrated = probability, decision at 0.5.
        assert (served["policy_version"] == 0).all(), family
        np.testing.assert_allclose(
            served.loc[~missing, "calibrated"], expected[~missing], rtol=1e-6
        )
        decided = served.loc[~missing, "decision"].tolist()
        assert decided == (expected[~missing] >= 0.5).tolist(), family


def test_two_versions_in_one_process_each_run_their_own_policy_code(tmp_path, monkeypatch):
    """A server that follows the alias loads version after version in one process: each must
    run the policy code logged with it, not whichever was imported first."""
    from feedback_pipeline.registry import mlflow_registry

    estimator, train = fitted("logistic_regression")
    registry = local_registry(with_mlflow_store(tmp_path))

    def log() -> str:
        return registry.log_challenger(
            estimator, "logistic_regression", FEATURES, train.X, {}, {}, {}, "# card"
        ).version

    first = log()
    changed = tmp_path / "served_policy.py"
    changed.write_text(
        mlflow_registry.SERVED_POLICY_CODE.read_text() + "\nCODE_REVISION = 'second'\n"
    )
    monkeypatch.setattr(mlflow_registry, "SERVED_POLICY_CODE", changed)
    second = log()
    old, new = (registry.load(v).unwrap_python_model().served_policy for v in (first, second))
    assert getattr(new, "CODE_REVISION", None) == "second"
    assert not hasattr(old, "CODE_REVISION")


def test_scoring_arrays_serves_what_predict_serves_in_float64(tmp_path):
    """The server's array path (``ProbabilityModel.score``) and the pyfunc's ``predict`` give
    the same served columns, in float64 whether or not a row falls back (XGBoost's own
    probabilities are float32)."""
    estimator, train = fitted("xgboost")
    registry = local_registry(with_mlflow_store(tmp_path))
    version = registry.log_challenger(
        estimator, "xgboost", FEATURES, train.X, {}, {}, {}, "# card"
    ).version
    model = registry.load(version)
    rows = train.X.head(30).assign(rule_confidence=np.linspace(0.0, 1.0, 30))
    for frame in (rows.dropna(), rows):  # every row scorable; some rows missing rsi
        columns = {name: frame[name].to_numpy(dtype=float) for name in frame.columns}
        arrays = model.unwrap_python_model().score(columns, len(frame))
        served = model.predict(frame)
        for name in ("probability", "calibrated", "blended_confidence"):
            assert arrays[name].dtype == np.float64, name
            np.testing.assert_array_equal(arrays[name], served[name].to_numpy(), err_msg=name)
        for name in ("decision", "fallback", "policy_version"):
            assert arrays[name].tolist() == served[name].tolist(), name
    assert arrays["fallback"].any() and not arrays["fallback"].all()


def test_a_registry_never_redirects_the_next_data_directorys_registry(tmp_path, monkeypatch):
    """MLflow exports its global URIs to the environment, which ``default_tracking_uri`` reads
    as the user's choice: a second data directory's registry opened the first one's store."""
    first = local_registry(with_mlflow_store(tmp_path / "first"))
    second = local_registry(with_mlflow_store(tmp_path / "second"))
    assert str(tmp_path / "second" / "mlflow.db") in second.tracking_uri
    assert first.tracking_uri != second.tracking_uri
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    # A store the user names in the environment is still the one every registry opens.
    chosen = first.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    assert local_registry(tmp_path / "second").tracking_uri == chosen
    assert os.environ["MLFLOW_TRACKING_URI"] == chosen
