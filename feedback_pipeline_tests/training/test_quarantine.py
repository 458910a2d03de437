"""The label audit: which weeks a sound model ranks backwards, and how weeks are counted."""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.registry.model_registry import MODEL_NAME
from feedback_pipeline.training.quarantine import (
    ContradictingWeek,
    contradicting_weeks,
    persisting_weeks,
    quarantined_weeks,
    record_quarantine,
    week_starts,
)


def test_week_starts_are_duckdbs_iso_weeks():
    times = np.datetime64("2026-03-01T00:00") + np.arange(0, 40 * 24 * 60, 97).astype(
        "timedelta64[m]"
    )
    expected = duckdb.sql(
        "SELECT date_trunc('week', t)::TIMESTAMP AS w FROM (SELECT unnest($times) AS t)",
        params={"times": times.astype("datetime64[us]").tolist()},
    ).fetchnumpy()["w"]
    assert (week_starts(times) == np.asarray(expected, dtype="datetime64[us]")).all()


def _week(rng, day: str, n: int, labels: str):
    """n scored rows of a sound model (AUC about 0.85) and their labels: true, flipped or
    a coin toss."""
    truth = rng.random(n) < 0.5
    score = 1 / (1 + np.exp(-(np.where(truth, 1.5, -1.5) + rng.normal(0, 1.2, n))))
    y = {"true": truth, "flipped": ~truth, "random": rng.random(n) < 0.5}[labels]
    time = np.datetime64(day) + rng.integers(0, 7 * 86400, n).astype("timedelta64[s]")
    return time, y.astype(int), score


def test_only_a_week_ranked_backwards_is_contradicting():
    rng = np.random.default_rng(5)
    weeks = [
        _week(rng, "2026-03-02", 400, "true"),
        _week(rng, "2026-03-09", 400, "flipped"),
        _week(rng, "2026-03-16", 400, "random"),  # no better than chance is not backwards
        _week(rng, "2026-03-23", 60, "flipped"),  # too few labels to say
    ]
    time, y, p = (np.concatenate(parts) for parts in zip(*weeks, strict=True))
    found = contradicting_weeks(time, y, p, min_rows=100, max_p=0.001)
    assert [f"{w.week_start:%Y-%m-%d}" for w in found] == ["2026-03-09"]
    assert found[0].rows == 400 and found[0].auc < 0.2 and found[0].p_value < 1e-20


def test_an_operator_lists_and_releases_a_quarantined_week(data_dir, con, capsys):
    week = ContradictingWeek(datetime(2026, 3, 9), 400, 0.12, 1e-30)
    record_quarantine(con, MODEL_NAME, datetime(2026, 3, 16), "7", [week])
    record_quarantine(con, MODEL_NAME, datetime(2026, 3, 23), "8", [week])  # found again: kept once
    con.close()
    assert main(["--data-dir", str(data_dir), "quarantine", "list"]) == 0
    listed = capsys.readouterr().out
    assert "2026-03-09" in listed and "2026-03-16" in listed and "2026-03-23" not in listed

    arguments = ["--data-dir", str(data_dir), "quarantine", "release"]
    assert main([*arguments, "2026-03-10", "--reason", "x"]) == 2  # not a Monday
    assert "not a Monday" in capsys.readouterr().err
    assert main([*arguments, "2026-03-09", "--reason", "the broker fixed its feed"]) == 0
    assert main([*arguments, "2026-03-09", "--reason", "again"]) == 2  # nothing left to release
    assert "is not quarantined" in capsys.readouterr().err
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as check:
        assert quarantined_weeks(check, MODEL_NAME, datetime(2027, 1, 1)) == []
        (reason,) = check.execute(
            "SELECT reason FROM ops.retraining_events WHERE action = 'release_quarantine'"
        ).fetchall()[0]
    assert reason == "week of 2026-03-09: the broker fixed its feed"


def contradiction(week: str) -> ContradictingWeek:
    return ContradictingWeek(datetime.fromisoformat(week), 500, 0.4, 1e-6)


@pytest.mark.parametrize(
    ("found", "quarantined", "max_weeks", "persisting"),
    [
        (["2026-03-16"], [], 1, []),  # one week: a broken feed
        (["2026-03-23"], ["2026-03-16"], 1, ["2026-03-16", "2026-03-23"]),  # it went on
        (["2026-03-23"], ["2026-03-16"], 2, []),  # two weeks may still be an episode
        (
            ["2026-03-30"],
            ["2026-03-16", "2026-03-23"],
            2,
            ["2026-03-16", "2026-03-23", "2026-03-30"],
        ),
        (["2026-03-30"], ["2026-03-16"], 1, []),  # a clean week between: two episodes
        ([], ["2026-03-16", "2026-03-23"], 1, []),  # nothing new found: nothing to decide
    ],
)
def test_a_contradiction_that_lasts_is_the_world_changing(
    found, quarantined, max_weeks, persisting
):
    weeks = persisting_weeks(
        [contradiction(week) for week in found],
        [datetime.fromisoformat(week) for week in quarantined],
        max_weeks,
    )
    assert weeks == [datetime.fromisoformat(week) for week in persisting]
