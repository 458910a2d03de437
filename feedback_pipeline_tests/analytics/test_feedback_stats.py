"""feedback_stats on a simulated stream: every prediction counted once, the figures per week and
group, the FP-rate trend per environment and the note terms that go with good and bad labels."""

from __future__ import annotations

import json
from datetime import timedelta

import duckdb
import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.simulator.feedback_stream import BAD_TERMS, GOOD_TERMS
from feedback_pipeline_tests.analytics.streams import simulated_stream


def stats_json(data_dir, *args: str) -> dict:
    return main(["--data-dir", str(data_dir), "stats", "--json", *args])


def test_stats_account_for_every_prediction_and_find_the_note_terms(tmp_path, capsys):
    as_of = simulated_stream(tmp_path, rating_rate=0.4)
    assert stats_json(tmp_path, "--as-of", as_of.isoformat(), "--since", "60d") == 0
    stats = json.loads(capsys.readouterr().out)

    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    landed, judged, rejected = con.execute(
        """SELECT count(DISTINCT prediction_id),
                  count(DISTINCT prediction_id) FILTER (WHERE event_type = 'reject'),
                  count(*) FILTER (WHERE event_type = 'rate')
           FROM raw.predictions LEFT JOIN raw.feedback_events USING (prediction_id)"""
    ).fetchone()
    con.close()
    weekly = stats["weekly"]
    assert sum(row["predictions"] for row in weekly) == landed
    assert {(row["environment"], row["variant"]) for row in weekly} >= {
        ("prod", "A"), ("prod", "B"), ("dev", "A"), ("dev", "B")
    }  # fmt: skip
    for row in weekly:
        assert 0 <= row["accept_rate"] <= 1 and 0 <= row["fp_rate"] <= 1
        if row["mean_rating"] is not None:
            assert 1 <= row["mean_rating"] <= 5
    assert sum(row["ratings"] for row in weekly) > 0

    trend = stats["fp_trend"]
    assert {row["environment"] for row in trend} == {"prod", "dev"}
    for row in trend:
        assert row["fp_rate_low"] <= row["fp_rate"] <= row["fp_rate_high"]

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

    segments = {(row["field"], row["value"]) for row in stats["segments"]}
    assert {("variant", "A"), ("variant", "B"), ("environment", "prod")} <= segments


def test_stats_by_variant_give_one_row_per_week_and_variant(tmp_path, capsys):
    as_of = simulated_stream(tmp_path)
    assert stats_json(tmp_path, "--as-of", as_of.isoformat(), "--by", "variant") == 0
    weekly = json.loads(capsys.readouterr().out)["weekly"]
    keys = [(row["week"], row["variant"]) for row in weekly]
    assert len(keys) == len(set(keys)) and {variant for _, variant in keys} == {"A", "B"}
    assert "environment" not in weekly[0] and "model_version" not in weekly[0]


def test_stats_without_a_warehouse_say_what_to_do(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "stats"]) == 2
    assert "run `make demo` or the ingest_job first" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["30", "thirty days"])
def test_a_bad_since_is_refused(tmp_path, since, capsys):
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "stats", "--since", since])
    assert "expected a number and d, h or m" in capsys.readouterr().err


def test_the_window_is_since_to_as_of(tmp_path, capsys):
    as_of = simulated_stream(tmp_path)
    main(["--data-dir", str(tmp_path), "stats", "--json", "--as-of", as_of.isoformat(),
          "--since", "7d"])  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    assert stats["since"] == (as_of - timedelta(days=7)).isoformat()
    assert min(row["week"] for row in stats["weekly"]) >= (as_of - timedelta(days=14)).isoformat()
