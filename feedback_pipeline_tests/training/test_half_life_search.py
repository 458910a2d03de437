"""When the half-lives are searched: at a cold start and in the full retrain; a weekly retrain
with a champion fits the champion's half-life only (one fit, no switch on a week of noise)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.promotion.apply import apply_decision
from feedback_pipeline.promotion.judge import evaluate_and_judge
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import Settings, with_overrides
from feedback_pipeline.training.challengers import (
    NO_CHAMPION,
    candidate_half_lives,
    champion_half_life,
    train_challengers,
)
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.warehouse import connection
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF

HALF_LIVES = {"training": {"half_life_days": [7.0, 60.0], "half_life_search": "full_retrain"}}


@pytest.mark.parametrize(
    ("search", "incumbent", "every_retrain", "expected"),
    [
        (True, 60.0, False, [7.0, 60.0]),  # the full retrain searches
        (False, NO_CHAMPION, False, [7.0, 60.0]),  # a cold start searches
        (False, 60.0, True, [7.0, 60.0]),  # half_life_search: every_retrain
        (False, 60.0, False, [60.0]),  # a weekly retrain keeps the champion's
        (False, None, False, [None]),  # ... also "no decay"
        (False, 365.0, False, [7.0, 60.0]),  # not a configured one (settings changed): search
    ],
)
def test_which_half_lives_a_round_fits(search, incumbent, every_retrain, expected):
    overrides = dict(HALF_LIVES)
    if every_retrain:
        overrides = {"training": {**HALF_LIVES["training"], "half_life_search": "every_retrain"}}
    settings = with_overrides(Settings(), overrides)
    if incumbent is None:
        settings = with_overrides(settings, {"training": {"half_life_days": [None, 7.0]}})
    assert candidate_half_lives(settings, search, incumbent) == expected


def candidates_tried(registry, version: str) -> int:
    run_id = registry.client.get_model_version(registry.model_name, version).run_id
    return int(registry.client.get_run(run_id).data.params["candidates_tried"])


def test_a_weekly_round_fits_one_candidate_and_a_full_round_all(simulated_dir):
    con = connection.connect(simulated_dir / "warehouse.duckdb")
    registry = local_registry(simulated_dir)
    settings = with_overrides(Settings(), HALF_LIVES)
    quiet = lambda message: None  # noqa: E731

    def round_at(as_of, search: bool):
        build_labeled_outcomes(con, settings.labeling, as_of)
        build_training_set(con, settings.training, discover_features(con, None), as_of)
        return train_challengers(con, registry, settings, ["xgboost"], search, {}, quiet)

    cold = round_at(SIMULATED_AS_OF - timedelta(days=14), search=False)
    assert candidates_tried(registry, cold.best.version) == 2
    report = evaluate_and_judge(con, registry, cold, settings.gate, settings.models.seed, quiet)
    assert apply_decision(con, registry, report, "test", None, settings, quiet).promoted
    incumbent = champion_half_life(registry)
    assert incumbent in (7.0, 60.0)

    # the full retrain searches hyperparameters too: every budgeted candidate x 2 half-lives
    full = round_at(SIMULATED_AS_OF - timedelta(days=7), search=True)
    assert candidates_tried(registry, full.best.version) == 2 * settings.models.search_budget
    weekly = round_at(SIMULATED_AS_OF, search=False)
    assert candidates_tried(registry, weekly.best.version) == 1
    assert weekly.best.params["half_life_days"] == incumbent
    con.close()
