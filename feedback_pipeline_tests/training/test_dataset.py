"""The blended training set: weights, splits, point in time, hash."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.settings import (
    LabelingSettings,
    Settings,
    TrainingSettings,
    parse_settings,
)
from feedback_pipeline.training.dataset import (
    build_training_set,
    discover_features,
    load_info,
    training_set_table,
)
from feedback_pipeline.training.families import recency_weights, train_family
from feedback_pipeline.training.splits import load_split, selection_sample
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.tables import TRAINING_SET
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF, feedback, prediction


@pytest.fixture
def sim_con(simulated_dir):
    connection = warehouse.connect(simulated_dir / "warehouse.duckdb")
    yield connection
    connection.close()


def build(con, **training):
    features = discover_features(con, None)
    return build_training_set(con, TrainingSettings(**training), features, SIMULATED_AS_OF)


def test_features_default_to_the_numeric_features_present(sim_con):
    assert discover_features(sim_con, None) == sorted(
        ["momentum", "volatility", "volume_z", "spread", "rsi", "sentiment", "gap", "trend"]
    )
    assert discover_features(sim_con, ["rsi", "gap"]) == ["rsi", "gap"]


def test_feedback_rows_weigh_outcome_weight_times_strength(sim_con):
    build(sim_con, outcome_weight=3.0)
    wrong = sim_con.execute(
        f"""SELECT count(*) FROM {TRAINING_SET} t
            JOIN labeled.labeled_outcomes l ON l.prediction_id = t.row_id
            WHERE abs(t.weight - 3.0 * l.strength) > 1e-9"""
    ).fetchall()[0][0]
    baseline_weights = sim_con.execute(
        f"SELECT DISTINCT weight FROM {TRAINING_SET} WHERE source = 'baseline'"
    ).fetchall()
    assert wrong == 0
    assert baseline_weights == [(1.0,)]


def test_splits_are_time_ordered_and_holdout_is_matured_outcome_or_explicit(sim_con):
    summary = build(sim_con)
    bounds = dict(
        sim_con.execute(
            f"SELECT split, [min(event_time), max(event_time)] FROM {TRAINING_SET} GROUP BY split"
        ).fetchall()
    )
    assert bounds["train"][1] <= bounds["validation"][0]
    assert bounds["validation"][1] <= bounds["holdout"][0]
    sources = {
        s
        for (s,) in sim_con.execute(
            f"SELECT DISTINCT source FROM {TRAINING_SET} WHERE split = 'holdout'"
        ).fetchall()
    }
    assert sources <= {"outcome", "explicit"}
    assert bounds["holdout"][1] <= SIMULATED_AS_OF - timedelta(days=10)
    assert summary.counts["rows"].sum() == summary.info.rows


def test_use_outcomes_off_trains_on_baseline_only_but_keeps_the_holdout(sim_con):
    build(sim_con, use_outcomes=False)
    by_split = dict(
        sim_con.execute(
            f"""SELECT split, list(DISTINCT source ORDER BY source) FROM {TRAINING_SET}
            GROUP BY split"""
        ).fetchall()
    )
    assert by_split["train"] == ["baseline"]
    assert by_split["validation"] == ["baseline"]
    assert set(by_split["holdout"]) <= {"outcome", "explicit"}


def test_a_prediction_labeled_both_ways_keeps_the_feedback_label(sim_con):
    pid, label = sim_con.execute(
        "SELECT prediction_id, label FROM labeled.labeled_outcomes LIMIT 1"
    ).fetchall()[0]
    sim_con.execute(
        """INSERT INTO raw.baseline_examples
           SELECT ?, predicted_at, 1 - ?, features, NULL, 'test', 'test', 1, now()::TIMESTAMP
           FROM raw.predictions WHERE prediction_id = ?""",
        [pid, label, pid],
    )
    build(sim_con)
    rows = sim_con.execute(
        f"SELECT source, label FROM {TRAINING_SET} WHERE row_id = ?", [pid]
    ).fetchall()
    assert len(rows) == 1 and rows[0][0] != "baseline" and rows[0][1] == label


def test_point_in_time_and_lookback_bound_every_input(sim_con):
    build(sim_con, lookback_days=14)
    earliest, latest_label, holdout_start = sim_con.execute(
        f"""SELECT min(event_time), max(labeled_at), min(event_time) FILTER (split = 'holdout')
            FROM {TRAINING_SET}"""
    ).fetchall()[0]
    assert earliest > SIMULATED_AS_OF - timedelta(days=14)
    assert latest_label <= SIMULATED_AS_OF
    # The window's rows, straight from the inputs: labeled predictions made in the 14 days up to
    # as_of whose label is known by then, and baseline examples of those days.
    window = [SIMULATED_AS_OF - timedelta(days=14), SIMULATED_AS_OF]
    in_window = dict(
        sim_con.execute(
            """SELECT prediction_id, predicted_at FROM labeled.labeled_outcomes
               WHERE predicted_at > $1 AND predicted_at <= $2 AND labeled_at <= $2
               UNION ALL
               SELECT example_id, as_of FROM raw.baseline_examples
               WHERE as_of > $1 AND as_of <= $2""",
            window,
        ).fetchall()
    )
    rows = dict(sim_con.execute(f"SELECT row_id, event_time FROM {TRAINING_SET}").fetchall())
    assert len(rows) > 1000 and rows.keys() <= in_window.keys()
    # every one of them before the holdout starts is in the set (newer ones wait for maturity)
    before = {row for row, at in in_window.items() if at < holdout_start}
    assert {row for row, at in rows.items() if at < holdout_start} == before
    assert min(in_window.values()) < SIMULATED_AS_OF - timedelta(days=13)  # the window's edge


def test_same_data_and_settings_give_the_same_hash(sim_con):
    first = build(sim_con).info.content_hash
    assert build(sim_con).info.content_hash == first
    assert load_info(sim_con).content_hash == first
    assert build(sim_con, outcome_weight=2.5).info.content_hash != first


def test_outcome_weight_is_validated():
    with pytest.raises(ValueError, match="outcome_weight"):
        parse_settings({"training": {"outcome_weight": 0.05}})


def test_a_split_loads_in_time_order_with_missing_features_as_nan(sim_con):
    summary = build(sim_con)
    gap, rsi = "gap", "rsi"
    table = training_set_table(summary.info.content_hash)  # the view is not updatable
    sim_con.execute(
        f"""UPDATE {table} SET {gap} = NULL WHERE split = 'train' AND hash(row_id) % 7 = 0;
            UPDATE {table} SET {rsi} = NULL WHERE split = 'train' AND hash(row_id) % 5 = 1"""
    )
    split = load_split(sim_con, "train", summary.info.features)
    expected = sim_con.execute(
        f"""SELECT label, weight, {", ".join(summary.info.features)} FROM {TRAINING_SET}
            WHERE split = 'train' ORDER BY event_time, row_id"""
    ).df()
    assert len(split) == len(expected)
    assert (split.y == expected["label"].to_numpy()).all()
    assert (split.weight == expected["weight"].to_numpy()).all()
    assert list(split.X.columns) == summary.info.features
    assert (split.X.dtypes == "float64").all()
    # Missing features are NaN (XGBoost's missing value), at exactly the NULL cells.
    assert (split.X.isna().to_numpy() == expected[summary.info.features].isna().to_numpy()).all()
    assert split.X[[gap, rsi]].isna().sum().min() > 0
    assert split.X.fillna(0).equals(expected[summary.info.features].astype("float64").fillna(0))


def thirty_minute_stream(
    con, landing, write_landing, days: int = 30, turn: datetime | None = None
) -> datetime:
    """One prediction an hour, each with its outcome 30 minutes later (a win when x > 3, a loss
    when x > 3 from ``turn`` on); returns the last hour."""
    start = datetime(2026, 3, 1)
    hours = [start + timedelta(hours=h) for h in range(days * 24)]
    write_landing(
        "predictions",
        "p.jsonl",
        [
            prediction(
                f"p{i}",
                predicted_at=f"{t:%Y-%m-%dT%H:%M:%S}Z",
                features={"x": float(i % 7), "y": float(i % 3)},
            )
            for i, t in enumerate(hours)
        ],
    )
    write_landing(
        "feedback",
        "f.jsonl",
        [
            feedback(
                f"e{i}",
                f"p{i}",
                "outcome",
                f"{t + timedelta(minutes=30):%Y-%m-%dT%H:%M:%S}Z",
                outcome="win" if ((i % 7) > 3) != (turn is not None and t >= turn) else "loss",
            )
            for i, t in enumerate(hours)
        ],
    )
    for kind in ("predictions", "feedback"):
        ingest_kind(con, landing, kind)
    return hours[-1]


def test_maturity_comes_from_the_observed_label_delay(con, landing, write_landing):
    last = thirty_minute_stream(con, landing, write_landing)
    as_of = last + timedelta(hours=1)
    build_labeled_outcomes(con, LabelingSettings(), as_of)
    info = build_training_set(con, TrainingSettings(), ["x", "y"], as_of).info
    assert abs(info.maturity_days - 0.5 / 24) < 1e-6  # 30 minutes, not 10 days
    # so the holdout reaches up to the last hour whose outcome has landed
    newest_holdout = con.execute(
        f"SELECT max(event_time) FROM {TRAINING_SET} WHERE split = 'holdout'"
    ).fetchall()[0][0]
    assert newest_holdout == last
    # Overridden: the holdout is the newest fifth of the rows at least 3 days older than the
    # data's clock (the last outcome, 30 minutes after the last hour); the newer rows are left
    # to the refit.
    build_training_set(con, TrainingSettings(maturity_days=3), ["x", "y"], as_of)
    hours = [last - timedelta(hours=h) for h in reversed(range(30 * 24))]  # p0, p1, ...
    clock = last + timedelta(minutes=30)
    matured = [f"p{i}" for i, t in enumerate(hours) if t <= clock - timedelta(days=3)]
    unmatured = {f"p{i}" for i, t in enumerate(hours) if t > clock - timedelta(days=3)}
    by_split = dict(
        con.execute(f"SELECT split, list(row_id) FROM {TRAINING_SET} GROUP BY split").fetchall()
    )
    assert len(unmatured) == 72
    assert set(by_split["holdout"]) == set(matured[-math.floor(len(matured) * 0.2 + 0.5) :])
    assert unmatured <= set(by_split.get("refit_only", []))


def test_half_life_halves_the_weight_every_half_life_days(con, landing, write_landing):
    last = thirty_minute_stream(con, landing, write_landing)
    as_of = last + timedelta(hours=1)
    build_labeled_outcomes(con, LabelingSettings(), as_of)
    build_training_set(con, TrainingSettings(), ["x", "y"], as_of)
    rows = load_split(con, ("train", "validation", "holdout", "refit_only"), ["x", "y"])
    decayed = recency_weights(rows, 7.0)
    newest = rows.event_time.max()
    older = rows.event_time == newest - np.timedelta64(7, "D")
    # a row a half-life older than the newest weighs half as much; the mean weight is 1
    assert decayed[older][0] / decayed[rows.event_time == newest][0] == pytest.approx(0.5)
    assert decayed.mean() == pytest.approx(1.0)
    assert (recency_weights(rows, None) == rows.weight / rows.weight.mean()).all()


def test_the_half_life_is_chosen_on_validation_like_a_hyperparameter(con, landing, write_landing):
    # The world turns on day 15: x > 3 wins before, loses after. Train spans days 0 to ~19 and
    # validation ~19 to ~24, so only a short half-life (1 day) learns the world validation sees.
    last = thirty_minute_stream(con, landing, write_landing, turn=datetime(2026, 3, 16))
    as_of = last + timedelta(hours=1)
    build_labeled_outcomes(con, LabelingSettings(), as_of)
    build_training_set(con, TrainingSettings(), ["x", "y"], as_of)
    train, validation = (load_split(con, s, ["x", "y"]) for s in ("train", "validation"))
    assert train.event_time.min() < np.datetime64("2026-03-16") < train.event_time.max()
    assert validation.event_time.min() > np.datetime64("2026-03-16")
    params = Settings().models.hyperparameters.for_family("logistic_regression")

    def fitted(half_lives):
        return train_family(
            "logistic_regression", params, train, validation, seed=42, half_lives=half_lives
        )

    losses = {h: fitted([h]).validation_metrics["log_loss"] for h in (None, 1.0, 60.0)}
    assert losses[1.0] < 0.5 < np.log(2) < min(losses[None], losses[60.0])  # clearly better
    chosen = fitted([None, 60.0, 1.0])  # the best one last: not the first or the default
    assert chosen.params["half_life_days"] == 1.0
    assert chosen.validation_metrics["log_loss"] == pytest.approx(losses[1.0])


def test_candidates_are_compared_on_a_seeded_sample_of_train_rows(sim_con):
    """The search's cost stops growing with the data: at most selection_rows train rows, the
    same rows for the same seed, in time order; a smaller split is used whole."""
    build(sim_con)
    train = load_split(sim_con, "train", discover_features(sim_con, None))
    sample = selection_sample(train, 1000, seed=42)
    assert len(sample) == 1000 < len(train)
    assert np.all(np.diff(sample.event_time) >= np.timedelta64(0))
    assert sample.X.equals(selection_sample(train, 1000, seed=42).X)
    assert not sample.X.equals(selection_sample(train, 1000, seed=7).X)
    # every sampled row is a train row with its own label and weight
    rows = train.X.assign(y=train.y, w=train.weight).merge(
        sample.X.assign(y=sample.y, w=sample.weight), how="inner"
    )
    assert len(rows) >= 1000
    assert selection_sample(train, None, seed=42) is train
    assert selection_sample(train, len(train), seed=42) is train
