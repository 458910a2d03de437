"""``mlflow models serve`` on ``models:/feedback_model@champion``: the champion is an ordinary
MLflow model, so MLflow's own scoring server serves the policy columns too."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline_tests.conftest import with_mlflow_store
from feedback_pipeline_tests.servers import BIN, http_ok, start_on_free_port
from feedback_pipeline_tests.serving.test_server import (
    FEATURES,
    POLICY_COLUMNS,
    fit_logistic,
    post,
    register,
    subprocess_env,
)


def test_mlflow_models_serve_scores_the_champion_with_the_policy_columns(tmp_path):
    registry = local_registry(with_mlflow_store(tmp_path))
    estimator = fit_logistic(1.0, 5)
    registry.set_alias(CHAMPION, register(registry, estimator))
    server, url = start_on_free_port(
        lambda port: [
            *(str(BIN / "mlflow"), "models", "serve", "-m", "models:/feedback_model@champion"),
            *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
        ],
        subprocess_env(MLFLOW_TRACKING_URI=registry.tracking_uri),
        tmp_path / "mlflow-serve.log",
        "/ping",
    )
    try:
        assert http_ok(f"{url}/health")
        rows = pd.DataFrame(
            {
                "momentum": [-1.2, 0.4, 1.5, 0.3],
                "rsi": [0.3, -0.2, 0.9, None],  # the last row cannot be scored
                "gap": [0.0, 0.5, -0.5, 0.2],
                "rule_confidence": [0.3, 0.6, 0.7, 0.42],
            }
        )
        status, answer = post(f"{url}/invocations", {"dataframe_split": rows.to_dict("split")})
    finally:
        server.stop()
    assert status == 200, (answer, server.tail())
    served = pd.DataFrame(answer["predictions"])
    assert set([*POLICY_COLUMNS, "fallback", "policy_version"]) <= set(served.columns)
    expected = estimator.predict_proba(rows.loc[:2, FEATURES])[:, 1]
    np.testing.assert_allclose(served.loc[:2, "probability"], expected, rtol=1e-9)
    assert served["fallback"].tolist() == [False, False, False, True]
    assert served.loc[3, "blended_confidence"] == 0.42 and pd.isna(served.loc[3, "probability"])
    assert (served["policy_version"] == 0).all()
    # The default policy: blended = 0.6 x model + 0.4 x rule_confidence; decision at 0.5.
    blended = 0.6 * expected + 0.4 * rows.loc[:2, "rule_confidence"].to_numpy()
    np.testing.assert_allclose(served.loc[:2, "blended_confidence"], blended, rtol=1e-9)
    assert served["decision"].tolist() == (served["blended_confidence"] >= 0.5).tolist()
