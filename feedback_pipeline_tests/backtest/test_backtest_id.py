"""A backtest is known by its plan, settings and data: the same ones resume it, and any change
to what the replay reads (one outcome, one feature value) or to the settings is a new one."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from feedback_pipeline.backtest.replay import BacktestPlan, backtest_id, data_fingerprint
from feedback_pipeline.settings import Settings, with_overrides
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.tables import RAW_FEEDBACK_EVENTS, RAW_PREDICTIONS

PLAN = BacktestPlan(datetime(2026, 2, 2), datetime(2026, 3, 2), timedelta(days=7))


def test_the_backtest_id_follows_the_data_and_the_settings(simulated_dir):
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    try:
        settings = Settings()
        first = backtest_id(PLAN, settings, data_fingerprint(con))
        assert backtest_id(PLAN, settings, data_fingerprint(con)) == first  # a rerun resumes
        gate_off = with_overrides(settings, {"gate": {"mode": "always"}})
        assert backtest_id(PLAN, gate_off, data_fingerprint(con)) != first

        # one outcome changed: same counts and dates, other data
        con.execute(
            f"UPDATE {RAW_FEEDBACK_EVENTS} SET outcome = CASE outcome WHEN 'win' THEN 'loss' "
            "ELSE 'win' END WHERE event_id = (SELECT min(event_id) FROM "
            f"{RAW_FEEDBACK_EVENTS} WHERE event_type = 'outcome')"
        )
        outcome_changed = backtest_id(PLAN, settings, data_fingerprint(con))
        assert outcome_changed != first

        # one feature value changed
        con.execute(
            f"UPDATE {RAW_PREDICTIONS} SET features = json_object('momentum', 9.5) "
            f"WHERE prediction_id = (SELECT min(prediction_id) FROM {RAW_PREDICTIONS})"
        )
        assert backtest_id(PLAN, settings, data_fingerprint(con)) not in (first, outcome_changed)
    finally:
        con.close()


@pytest.mark.parametrize(
    "overrides",
    [
        {"labeling": {"policy": {"accept": {"strength": 0.4}}}},
        {"labeling": {"environments": ["prod", "dev"]}},
        {"training": {"lookback_days": 90}},
        {"training": {"refit": False}},
        {"models": {"families": ["logistic_regression"]}},
        {"models": {"hyperparameters": {"xgboost": {"max_depth": 3}}}},
        {"gate": {"rule": "superiority"}},
        {"gate": {"min_holdout_rows": 100}},
        {"features": ["momentum", "volatility"]},
    ],
    ids=lambda overrides: json.dumps(overrides),
)
def test_every_setting_the_replay_reads_is_part_of_the_backtest_id(overrides):
    settings = Settings()
    changed = with_overrides(settings, overrides)
    assert changed != settings
    assert backtest_id(PLAN, changed, "data") != backtest_id(PLAN, settings, "data")


def test_the_plan_is_part_of_the_backtest_id():
    first = backtest_id(PLAN, Settings(), "data")
    assert backtest_id(PLAN, Settings(), "data") == first
    plans = [
        replace(PLAN, start=PLAN.start - timedelta(days=7)),
        replace(PLAN, end=PLAN.end + timedelta(days=7)),
        replace(PLAN, every=timedelta(days=1)),
    ]
    assert len({first, *(backtest_id(plan, Settings(), "data") for plan in plans)}) == 4
    assert backtest_id(PLAN, Settings(), "other data") != first
