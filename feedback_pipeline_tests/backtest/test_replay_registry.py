"""A replay registry trains the very same models as the live MLflow registry, keeps nothing in
MLflow, and a new process finds its versions and aliases where the last one left them."""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient

from feedback_pipeline.backtest.replay_registry import ReplayRegistry
from feedback_pipeline.promotion.apply import apply_decision
from feedback_pipeline.promotion.judge import evaluate_and_judge
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION, ModelRegistry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.training.splits import load_split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF


def test_replay_and_live_registries_train_and_serve_identical_models(simulated_dir):
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    settings = Settings()
    info = build_training_set(
        con, settings.training, discover_features(con, None), SIMULATED_AS_OF
    ).info
    live = local_registry(simulated_dir)
    replay = ReplayRegistry(simulated_dir / "replay", "feedback_model_backtest_x_policy")
    quiet = lambda message: None  # noqa: E731
    changes = {}
    for registry in (live, replay):
        round_ = train_challengers(con, registry, settings, ["xgboost"], False, {}, quiet, info)
        report = evaluate_and_judge(con, registry, round_, settings.gate, 42, quiet)
        changes[registry.model_name] = (
            round_,
            report,
            apply_decision(con, registry, report, "test", None, settings, quiet),
        )
    holdout = load_split(con, "holdout", info.features, info.content_hash)
    con.close()

    (live_round, live_report, live_change) = changes[live.model_name]
    (replay_round, replay_report, replay_change) = changes[replay.model_name]
    assert live_round.best.params == replay_round.best.params
    assert live_report.best.holdout == replay_report.best.holdout  # scored alike on the holdout
    assert live_change.promoted and replay_change.promoted
    live_champion, replay_champion = live.alias_version(CHAMPION), replay.alias_version(CHAMPION)
    assert live.version_tags(live_champion)["refit_of"] == live_round.best.version
    assert replay.version_tags(replay_champion)["refit_of"] == replay_round.best.version
    live_p = live.predict_probability(live_champion, holdout.X).to_numpy()
    replay_p = replay.predict_probability(replay_champion, holdout.X).to_numpy()
    assert live_p.dtype == replay_p.dtype == np.float64
    np.testing.assert_array_equal(live_p, replay_p)  # the served model, bit for bit

    # nothing of the replay is in MLflow; a new process finds it in its folder
    registered = MlflowClient(live.tracking_uri).search_registered_models()
    assert [m.name for m in registered] == [live.model_name]
    reopened = ReplayRegistry(simulated_dir / "replay", replay.model_name)
    assert reopened.alias_version(CHAMPION) == replay_champion
    assert reopened.versions() == replay.versions() == ["1", "2"]
    np.testing.assert_array_equal(
        reopened.predict_probability(replay_champion, holdout.X).to_numpy(), replay_p
    )
    assert reopened.run_metrics(replay_round.best.version).keys() >= {
        "validation_log_loss",
        "holdout_accuracy",
    }


def test_both_registries_offer_what_the_retrain_path_calls(tmp_path):
    assert isinstance(local_registry(tmp_path), ModelRegistry)
    assert isinstance(ReplayRegistry(tmp_path / "replay", "m"), ModelRegistry)
    assert not isinstance(object(), ModelRegistry)
