"""Stress episodes of the simulator: wrong feedback, a broken feature feed, a one-class burst.
Each changes what it says on its days and nothing on the others."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.simulator.feedback_stream import (
    SimulationConfig,
    feedback_for_day,
    predictions_for_day,
    simulate,
)

CALM = SimulationConfig(days=12, predictions_per_day=2000, baseline_per_day=20, bad_rate=0.0)
EPISODE = {"episode_days": 2}


def outcomes(config: SimulationConfig, day: int) -> pd.DataFrame:
    """Each prediction's truth and the outcome its feedback reports, where there is one."""
    predictions, good = predictions_for_day(config, day)
    feedback = feedback_for_day(config, day, predictions, good)
    truth = pd.DataFrame({"prediction_id": predictions["prediction_id"], "good": good})
    reported = feedback.loc[feedback["event_type"] == "outcome", ["prediction_id", "outcome"]]
    return truth.merge(reported, on="prediction_id")


@pytest.mark.parametrize(
    "mode, win_rate_of_good", [("flipped", (0.0, 0.0)), ("random", (0.4, 0.5))]
)
def test_label_noise_reports_the_wrong_outcomes_on_its_days_only(mode, win_rate_of_good):
    noisy = replace(CALM, label_noise_day=2, label_noise=mode, **EPISODE)
    for day in range(6):  # outcomes come 1-10 days later: the last days have few by the end
        seen = outcomes(noisy, day)
        wins_of_good = (seen.loc[seen["good"], "outcome"] == "win").mean()
        if day in (2, 3):
            low, high = win_rate_of_good
            assert low - 0.05 <= wins_of_good <= high + 0.05, (day, wins_of_good)
        else:
            assert wins_of_good > 0.85, (day, wins_of_good)
            pd.testing.assert_frame_equal(seen, outcomes(CALM, day))


@pytest.mark.parametrize("mode", ["missing", "constant"])
def test_a_feature_outage_breaks_the_reported_feature_not_the_world(tmp_path, con, mode):
    broken = replace(
        CALM,
        days=6,
        predictions_per_day=50,
        feature_outage_day=1,
        feature_outage="rsi",
        feature_outage_mode=mode,
        **EPISODE,
    )
    for day in range(4):  # the truth is the world's, whatever the feed reports
        calm = replace(broken, feature_outage_day=None)
        assert (predictions_for_day(broken, day)[1] == predictions_for_day(calm, day)[1]).all()
    simulate(tmp_path / "landing", broken)
    for kind in ("predictions", "baseline"):
        ingest_kind(con, tmp_path / "landing", kind)
    rows = con.execute(
        """
        SELECT day, features->>'$.rsi' AS rsi, features->>'$.momentum' AS momentum FROM (
            SELECT (predicted_at::DATE - DATE '2026-01-05') AS day, features
            FROM raw.predictions
            UNION ALL
            SELECT (as_of::DATE - DATE '2026-01-05'), features FROM raw.baseline_examples)
        """
    ).df()
    episode = rows["day"].isin([1, 2])
    assert episode.sum() > 0
    if mode == "missing":
        assert rows.loc[episode, "rsi"].isna().all()
    else:
        assert (rows.loc[episode, "rsi"].astype(float) == 0.0).all()
    assert rows.loc[~episode, "rsi"].notna().all()
    assert rows.loc[~episode, "rsi"].astype(float).std() > 0.5
    assert rows["momentum"].notna().all()


@pytest.mark.parametrize("label", [0, 1])
def test_a_class_burst_floods_one_class_on_its_days(label):
    burst = replace(CALM, class_burst_day=3, class_burst_label=label, **EPISODE)
    for day in range(CALM.days):
        rate = predictions_for_day(burst, day)[1].mean()
        if day in (3, 4):
            assert (rate > 0.9) if label else (rate < 0.1), (day, rate)
        else:
            assert 0.3 < rate < 0.8, (day, rate)


def test_a_feedback_burst_reports_on_one_class_only_on_its_days():
    burst = replace(
        CALM, class_burst_day=3, class_burst_label=0, class_burst_mode="feedback", **EPISODE
    )
    for day in range(6):
        predictions, good = predictions_for_day(burst, day)
        calm_predictions, calm_good = predictions_for_day(CALM, day)
        assert predictions.equals(calm_predictions) and (good == calm_good).all()  # the world
        feedback = feedback_for_day(burst, day, predictions, good)
        truth = dict(zip(predictions["prediction_id"], good, strict=True))
        reported_good = feedback["prediction_id"].map(truth)
        if day in (3, 4):
            assert len(feedback) > 500 and not reported_good.any(), day  # losses only
        else:
            assert 0.3 < reported_good.mean() < 0.8, day
            assert len(feedback) == len(feedback_for_day(CALM, day, predictions, good))


def test_simulate_takes_the_episodes_as_options(tmp_path, capsys):
    code = main(
        ["--data-dir", str(tmp_path), "simulate", "--days", "3", "--predictions-per-day", "30",
         "--label-noise-day", "1", "--label-noise", "random", "--feature-outage-day", "0",
         "--feature-outage", "gap", "--feature-outage-mode", "constant", "--class-burst-day",
         "2", "--class-burst-label", "1", "--episode-days", "1", "--bad-rate", "0"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    first = (tmp_path / "landing" / "predictions" / "predictions_2026-01-05.jsonl").read_text()
    assert all(json.loads(line)["features"]["gap"] == 0 for line in first.splitlines())
    assert main(["--data-dir", str(tmp_path), "simulate", "--feature-outage", "nope"]) == 2
    assert "feature_outage must be one of" in capsys.readouterr().err
