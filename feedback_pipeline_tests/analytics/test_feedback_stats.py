"""feedback_stats on a simulated stream: every prediction counted once, the figures per week and
group, the FP-rate trend per environment and the note terms that go with good and bad labels.

The expected figures are computed here, in pandas, straight from the raw rows and the default
label policy as written in its docs (not with the SQL under test)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from feedback_pipeline.cli import main
from feedback_pipeline.simulator.feedback_stream import BAD_TERMS, GOOD_TERMS
from feedback_pipeline_tests.analytics.streams import simulated_stream

# The default label policy (rate_neutral gives no label) and the tie-break order on equal
# timestamps (the later one wins).
POLICY_LABEL = {
    **dict.fromkeys(["win", "accept", "export", "modify", "rate_good"], 1),
    **dict.fromkeys(["loss", "breakeven", "reject", "undo", "rate_bad"], 0),
}
TIE_ORDER = ["accept", "export", "modify", "rate_neutral", "rate_good", "rate_bad", "reject",
             "undo"]  # fmt: skip
HUMAN = ["accept", "export", "modify", "reject", "undo"]
WEEKLY_KEYS = ["week", "environment", "model_version", "variant"]


def stats_json(data_dir, *args: str) -> dict:
    return main(["--data-dir", str(data_dir), "stats", "--json", *args])


def last_per_prediction(events: pd.DataFrame, column: str, order: list[str]) -> pd.Series:
    """``column`` of each prediction's last event by ``order`` (then event id)."""
    ranked = events.sort_values([*order, "event_id"])
    return ranked.groupby("prediction_id")[column].last()


def expected_per_prediction(warehouse: Path, since: datetime, as_of: datetime) -> pd.DataFrame:
    """One row per prediction in (since, as_of] with its final human signal, label, last outcome
    and last rating, from the raw rows."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        predictions = con.execute("SELECT * FROM raw.predictions").df()
        events = con.execute("SELECT * FROM raw.feedback_events").df()
    predictions = predictions[
        (predictions["predicted_at"] > since) & (predictions["predicted_at"] <= as_of)
    ].set_index("prediction_id")
    events = events[
        (events["occurred_at"] <= as_of) & events["prediction_id"].isin(predictions.index)
    ].copy()
    rating = events["rating"].astype(float)  # settings' rating_good_min 4, rating_bad_max 2
    rated = np.select([rating >= 4, rating <= 2], ["rate_good", "rate_bad"], "rate_neutral")
    events["signal"] = np.select(
        [events["event_type"] == "outcome", events["event_type"] == "rate"],
        [events["outcome"], rated],
        events["event_type"],
    )
    events["tie"] = events["signal"].map({s: i + 1 for i, s in enumerate(TIE_ORDER)}).fillna(0)
    events["label"] = events["signal"].map(POLICY_LABEL)
    events["is_outcome"] = events["event_type"] == "outcome"
    human = events[events["event_type"].isin(HUMAN)]
    outcomes = events[events["is_outcome"]]
    ratings = events[events["event_type"] == "rate"]
    labeling = events.dropna(subset=["label"])  # outcomes decide, then the latest signal
    frame = predictions.assign(
        week=predictions["predicted_at"].dt.to_period("W-SUN").dt.start_time,
        model_version=predictions["model_version"].fillna("(none)"),
        variant=predictions["variant"].fillna("(none)"),
        final_human=last_per_prediction(human, "event_type", ["occurred_at", "tie"]),
        label=last_per_prediction(labeling, "label", ["is_outcome", "occurred_at", "tie"]),
        outcome=last_per_prediction(outcomes, "outcome", ["occurred_at"]),
        return_pct=last_per_prediction(outcomes, "return_pct", ["occurred_at"]),
        rating=last_per_prediction(ratings, "rating", ["occurred_at"]),
    )
    assert frame["final_human"].notna().any() and frame["label"].notna().any()
    return frame


def rate_of(values: pd.Series, among: pd.Series) -> pd.Series:
    """The mean of ``values`` over the rows where ``among`` is known (NaN where none is)."""
    return values.where(among.notna())


def expected_weekly(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    human = frame["final_human"]
    return (
        frame.assign(
            accept=rate_of(human.isin(["accept", "export"]).astype(float), human),
            reject=rate_of((human == "reject").astype(float), human),
            undo=rate_of((human == "undo").astype(float), human),
            modify=rate_of((human == "modify").astype(float), human),
            false_positive=1 - frame["label"],
            won=rate_of((frame["outcome"] == "win").astype(float), frame["outcome"]),
        )
        .groupby(by)
        .agg(
            predictions=("week", "size"),
            human_feedback=("final_human", "count"),
            accept_rate=("accept", "mean"),
            reject_rate=("reject", "mean"),
            undo_rate=("undo", "mean"),
            modify_rate=("modify", "mean"),
            labeled=("label", "count"),
            fp_rate=("false_positive", "mean"),
            outcomes=("outcome", "count"),
            win_rate=("won", "mean"),
            mean_return=("return_pct", "mean"),
            ratings=("rating", "count"),
            mean_rating=("rating", "mean"),
        )
        .reset_index()
    )


def as_frame(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["week"] = pd.to_datetime(frame["week"])
    for column in frame.columns.difference(keys):
        frame[column] = frame[column].astype(float)  # JSON null: NaN
    return frame.sort_values(keys, ignore_index=True)


def assert_same_figures(got: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    """Same groups, same counts, same rates (JSON keeps 10 decimals)."""
    expected = expected.sort_values(keys, ignore_index=True)[list(got.columns)]
    for column in expected.columns.difference(keys):
        expected[column] = expected[column].astype(float)  # pandas' NA: NaN
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, atol=1e-8, rtol=0)


def test_stats_account_for_every_prediction_and_find_the_note_terms(tmp_path, capsys):
    as_of = simulated_stream(tmp_path, rating_rate=0.4)
    assert stats_json(tmp_path, "--as-of", as_of.isoformat(), "--since", "60d") == 0
    stats = json.loads(capsys.readouterr().out)
    warehouse = tmp_path / "warehouse.duckdb"
    expected = expected_per_prediction(warehouse, as_of - timedelta(days=60), as_of)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        (landed,) = con.execute("SELECT count(*) FROM raw.predictions").fetchone()

    weekly = as_frame(stats["weekly"], WEEKLY_KEYS)
    assert weekly["predictions"].sum() == landed == len(expected)
    assert_same_figures(weekly, expected_weekly(expected, WEEKLY_KEYS), WEEKLY_KEYS)
    assert set(zip(weekly["environment"], weekly["variant"], strict=True)) == {
        ("prod", "A"), ("prod", "B"), ("dev", "A"), ("dev", "B")
    }  # fmt: skip
    assert weekly["ratings"].sum() > 0 and weekly["undo_rate"].max() > 0

    # FP rate per week and environment: the counts, and statsmodels' Wilson interval for them
    # at the default analytics.alpha (0.05)
    trend = as_frame(stats["fp_trend"], ["week", "environment"])
    counts = (
        expected.assign(false_positives=1 - expected["label"])
        .groupby(["week", "environment"])
        .agg(labeled=("label", "count"), false_positives=("false_positives", "sum"))
        .reset_index()
    )
    assert set(trend["environment"]) == {"prod", "dev"} and (counts["labeled"] > 0).all()
    assert_same_figures(trend[counts.columns], counts, ["week", "environment"])
    low, high = proportion_confint(
        counts["false_positives"], counts["labeled"], alpha=0.05, method="wilson"
    )
    rate = counts["false_positives"] / counts["labeled"]
    np.testing.assert_allclose(trend["fp_rate"], rate, atol=1e-9)
    np.testing.assert_allclose(trend["fp_rate_low"], low, atol=1e-9)
    np.testing.assert_allclose(trend["fp_rate_high"], high, atol=1e-9)

    # effectiveness (good-label rate) per variant and environment, with its Wilson interval
    segments = pd.DataFrame(stats["segments"]).set_index(["field", "value"])
    for field in ("variant", "environment"):
        labeled = expected.dropna(subset=["label"]).groupby(field)["label"].agg(["count", "sum"])
        got = segments.loc[field].loc[labeled.index]
        assert len(segments.loc[field]) == len(labeled)
        assert got["labeled"].tolist() == labeled["count"].tolist()
        assert got["good"].tolist() == labeled["sum"].tolist()
        low, high = proportion_confint(
            labeled["sum"], labeled["count"], alpha=0.05, method="wilson"
        )
        np.testing.assert_allclose(got["effectiveness_low"], low, atol=1e-9)
        np.testing.assert_allclose(got["effectiveness_high"], high, atol=1e-9)

    terms = {side: [] for side in ("good", "bad")}
    for row in stats["note_terms"]:
        terms[row["side"]].append(row["term"])
    good_words, bad_words = (set(" ".join(phrases).split()) for phrases in (GOOD_TERMS, BAD_TERMS))
    good_words, bad_words = good_words - bad_words, bad_words - good_words  # "breakout" is both
    assert terms["good"] and terms["bad"]
    for term in terms["good"]:  # each ranked term carries a word of its side, none of the other
        assert set(term.split()) & good_words and not set(term.split()) & bad_words, term
    for term in terms["bad"]:
        assert set(term.split()) & bad_words and not set(term.split()) & good_words, term


def test_stats_by_variant_give_one_row_per_week_and_variant(tmp_path, capsys):
    as_of = simulated_stream(tmp_path)
    assert stats_json(tmp_path, "--as-of", as_of.isoformat(), "--by", "variant") == 0
    weekly = json.loads(capsys.readouterr().out)["weekly"]
    keys = [(row["week"], row["variant"]) for row in weekly]
    assert len(keys) == len(set(keys)) and {variant for _, variant in keys} == {"A", "B"}
    assert "environment" not in weekly[0] and "model_version" not in weekly[0]
    # the default window, analytics.since_days (90), reaches back past the stream's start
    expected = expected_per_prediction(
        tmp_path / "warehouse.duckdb", as_of - timedelta(days=90), as_of
    )
    by = ["week", "variant"]
    assert_same_figures(as_frame(weekly, by), expected_weekly(expected, by), by)


def test_stats_without_a_warehouse_say_what_to_do(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "stats"]) == 2
    assert "run `make demo` or the ingest_job first" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["30", "thirty days"])
def test_a_bad_since_is_refused(tmp_path, since, capsys):
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "stats", "--since", since])
    assert "expected a number and d, h or m" in capsys.readouterr().err


def test_the_window_is_since_to_as_of(tmp_path, capsys):
    end = simulated_stream(tmp_path)
    # mid-stream and mid-week: predictions after as_of and feedback not yet given are left out
    as_of = end - timedelta(days=9, hours=12)
    assert stats_json(tmp_path, "--as-of", as_of.isoformat(), "--since", "7d") == 0
    stats = json.loads(capsys.readouterr().out)
    since = as_of - timedelta(days=7)
    assert stats["since"] == since.isoformat()
    expected = expected_per_prediction(tmp_path / "warehouse.duckdb", since, as_of)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        (later_feedback,) = con.execute(
            """SELECT count(*) FROM raw.feedback_events JOIN raw.predictions USING (prediction_id)
               WHERE predicted_at > $since AND predicted_at <= $as_of AND occurred_at > $as_of""",
            {"since": since, "as_of": as_of},
        ).fetchone()
    assert later_feedback > 0  # so the window leaves some feedback out
    weekly = as_frame(stats["weekly"], WEEKLY_KEYS)
    assert_same_figures(weekly, expected_weekly(expected, WEEKLY_KEYS), WEEKLY_KEYS)
    assert weekly["week"].min() == pd.Timestamp(since).to_period("W-SUN").start_time
