"""A backtest's lean registry skips what only people read, and trains the very same models."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from feedback_pipeline.evaluation.report import evaluate
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.training.dataset import build_training_set, discover_features, load_split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_lean_and_live_registries_train_identical_models(simulated_dir):
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    settings = Settings()
    info = build_training_set(
        con, settings.training, discover_features(con, None), SIMULATED_AS_OF
    ).info
    live = local_registry(simulated_dir)
    lean = local_registry(simulated_dir, model_name="feedback_model_backtest_lean")
    lean.lean = True
    quiet = lambda message: None  # noqa: E731
    rounds = {
        registry.model_name: train_challengers(
            con, registry, settings, ["xgboost"], False, {}, quiet, info
        )
        for registry in (live, lean)
    }
    for registry in (live, lean):
        evaluate(con, registry, rounds[registry.model_name], settings.gate, 42, quiet)
    holdout = load_split(con, "holdout", info.features, info.content_hash)
    con.close()

    (live_model,) = rounds[live.model_name].challengers
    (lean_model,) = rounds[lean.model_name].challengers
    assert live_model.params == lean_model.params
    live_p = live.predict_probability(live_model.version, holdout.X).to_numpy()
    lean_p = lean.predict_probability(lean_model.version, holdout.X).to_numpy()
    np.testing.assert_array_equal(live_p, lean_p)  # the same model, bit for bit

    client = MlflowClient(live.tracking_uri)
    live_files = artifacts(client, live_model.run_id)
    lean_files = artifacts(client, lean_model.run_id)
    assert {"model_card.md", "evaluation/report.json", "evaluation/report.md"} <= live_files
    assert not lean_files & {"model_card.md", "evaluation/report.json", "evaluation/report.md"}
    assert not [f for f in lean_files if f.endswith(".png")]
    assert client.get_run(lean_model.run_id).data.metrics.keys() >= {
        "validation_log_loss",
        "holdout_accuracy",
    }
