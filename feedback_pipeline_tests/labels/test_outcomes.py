"""The label policy, table-driven, on a real DuckDB file."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes, label_problems
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import LabelingSettings, parse_settings
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF, feedback, prediction, run_job

T0 = datetime(2026, 1, 5, 10, 0)
FAR_FUTURE = datetime(2030, 1, 1)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat() + "Z"


CASES = [
    # (events as (type, outcome or rating, minutes after T0), expected (label, source, strength,
    # signal))
    ([("accept", None, 5)], (1, "implicit", 0.5, "accept")),
    ([("export", None, 5)], (1, "implicit", 0.5, "export")),
    ([("modify", None, 5)], (1, "implicit", 0.25, "modify")),
    ([("reject", None, 5)], (0, "explicit", 1.0, "reject")),
    ([("undo", None, 5)], (0, "explicit", 1.5, "undo")),
    ([("outcome", "win", 5)], (1, "outcome", 1.0, "win")),
    ([("outcome", "loss", 5)], (0, "outcome", 1.0, "loss")),
    ([("outcome", "breakeven", 5)], (0, "outcome", 0.5, "breakeven")),
    # outcomes override every human signal, earlier or later
    ([("reject", None, 5), ("outcome", "win", 60)], (1, "outcome", 1.0, "win")),
    ([("outcome", "loss", 5), ("accept", None, 60)], (0, "outcome", 1.0, "loss")),
    # the latest outcome wins
    ([("outcome", "loss", 5), ("outcome", "win", 60)], (1, "outcome", 1.0, "win")),
    # among human signals the latest wins
    ([("reject", None, 5), ("accept", None, 60)], (1, "implicit", 0.5, "accept")),
    ([("accept", None, 5), ("reject", None, 60)], (0, "explicit", 1.0, "reject")),
    # undo beats an earlier accept, also at the very same instant
    ([("accept", None, 5), ("undo", None, 6)], (0, "explicit", 1.5, "undo")),
    ([("accept", None, 5), ("undo", None, 5)], (0, "explicit", 1.5, "undo")),
    ([("export", None, 5), ("undo", None, 5)], (0, "explicit", 1.5, "undo")),
    # a later accept after an undo is a fresh decision
    (
        [("accept", None, 5), ("undo", None, 6), ("accept", None, 30)],
        (1, "implicit", 0.5, "accept"),
    ),
    # time order holds before 1970 too (negative epoch)
    ([("accept", None, 5), ("reject", None, -60 * 24 * 365 * 60)], (1, "implicit", 0.5, "accept")),
    # ratings: 4-5 good, 1-2 bad, 3 excluded (so an earlier human signal decides)
    ([("rate", 5, 5)], (1, "explicit", 0.75, "rate_good")),
    ([("rate", 4, 5)], (1, "explicit", 0.75, "rate_good")),
    ([("rate", 2, 5)], (0, "explicit", 0.75, "rate_bad")),
    ([("rate", 1, 5)], (0, "explicit", 0.75, "rate_bad")),
    ([("rate", 3, 5)], None),
    ([("accept", None, 5), ("rate", 3, 60)], (1, "implicit", 0.5, "accept")),
    ([("accept", None, 5), ("rate", 1, 60)], (0, "explicit", 0.75, "rate_bad")),
    ([("rate", 1, 5), ("outcome", "win", 60)], (1, "outcome", 1.0, "win")),
    ([], None),
]


def land(con, landing, write_landing, events, environment="prod", feedback_env=None, pid="p1"):
    write_landing(
        "predictions",
        f"{pid}.jsonl",
        [prediction(pid, predicted_at=at(0), environment=environment)],
    )
    records = [
        feedback(
            f"{pid}-e{i}",
            pid,
            kind,
            at(minutes),
            **({"rating": outcome} if kind == "rate" else {"outcome": outcome} if outcome else {}),
            **({"environment": feedback_env} if feedback_env else {}),
        )
        for i, (kind, outcome, minutes) in enumerate(events)
    ]
    write_landing("feedback", f"{pid}-feedback.jsonl", records)
    ingest_kind(con, landing, "predictions")
    ingest_kind(con, landing, "feedback")


def labels(con) -> list[tuple]:
    return con.execute(
        "SELECT label, label_source, strength, deciding_signal FROM labeled.labeled_outcomes"
    ).fetchall()


@pytest.mark.parametrize(("events", "expected"), CASES, ids=lambda v: str(v)[:60])
def test_default_policy(con, landing, write_landing, events, expected):
    land(con, landing, write_landing, events)
    rows = build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE)
    assert rows == (0 if expected is None else 1)
    assert labels(con) == ([] if expected is None else [expected])


def test_point_in_time_sees_only_what_was_known(con, landing, write_landing):
    land(con, landing, write_landing, [("accept", None, 5), ("outcome", "loss", 3 * 24 * 60)])

    build_labeled_outcomes(con, LabelingSettings(), T0 + timedelta(minutes=1))
    assert labels(con) == []  # nothing known yet
    build_labeled_outcomes(con, LabelingSettings(), T0 + timedelta(hours=1))
    assert labels(con) == [(1, "implicit", 0.5, "accept")]
    build_labeled_outcomes(con, LabelingSettings(), T0 + timedelta(days=4))
    assert labels(con) == [(0, "outcome", 1.0, "loss")]
    labeled_at = con.execute("SELECT labeled_at FROM labeled.labeled_outcomes").fetchall()[0][0]
    assert labeled_at == T0 + timedelta(days=3)


def test_predictions_after_as_of_are_left_out(con, landing, write_landing):
    land(con, landing, write_landing, [("reject", None, 5)])
    assert build_labeled_outcomes(con, LabelingSettings(), T0 - timedelta(minutes=1)) == 0


def test_prod_only_by_default_and_dev_feedback_never_labels_prod(con, landing, write_landing):
    land(con, landing, write_landing, [("reject", None, 5)], environment="dev", pid="dev1")
    land(con, landing, write_landing, [("reject", None, 5)], feedback_env="dev", pid="prod1")
    land(con, landing, write_landing, [("reject", None, 5)], pid="prod2")

    build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE)
    ids = con.execute("SELECT prediction_id FROM labeled.labeled_outcomes").fetchall()
    assert ids == [("prod2",)]

    build_labeled_outcomes(con, LabelingSettings(environments=["prod", "dev"]), FAR_FUTURE)
    ids = con.execute("SELECT prediction_id FROM labeled.labeled_outcomes ORDER BY 1").fetchall()
    assert ids == [("dev1",), ("prod1",), ("prod2",)]


def test_policy_is_data_breakeven_can_be_excluded(con, landing, write_landing):
    land(con, landing, write_landing, [("accept", None, 5), ("outcome", "breakeven", 60)])
    policy = parse_settings({"labeling": {"policy": {"breakeven": {"label": None}}}}).labeling
    build_labeled_outcomes(con, policy, FAR_FUTURE)
    # the excluded outcome is ignored, so the human signal decides
    assert labels(con) == [(1, "implicit", 0.5, "accept")]


def test_policy_strengths_come_from_settings(con, landing, write_landing):
    land(con, landing, write_landing, [("modify", None, 5)])
    policy = parse_settings(
        {"labeling": {"policy": {"modify": {"label": 0, "strength": 2}}}}
    ).labeling
    build_labeled_outcomes(con, policy, FAR_FUTURE)
    assert labels(con) == [(0, "implicit", 2.0, "modify")]


def test_rating_thresholds_come_from_settings(con, landing, write_landing):
    land(con, landing, write_landing, [("rate", 3, 5)])
    policy = parse_settings({"labeling": {"rating_good_min": 3}}).labeling
    build_labeled_outcomes(con, policy, FAR_FUTURE)
    assert labels(con) == [(1, "explicit", 0.75, "rate_good")]


def test_overlapping_rating_thresholds_are_refused_naming_the_fields():
    with pytest.raises(ValueError, match="rating_bad_max .* must be below rating_good_min"):
        parse_settings({"labeling": {"rating_bad_max": 4}})


def test_rebuild_is_idempotent_and_matches_late_predictions(con, landing, write_landing):
    write_landing("feedback", "f.jsonl", [feedback("e1", "late", "reject", at(5))])
    ingest_kind(con, landing, "feedback")
    assert build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE) == 0
    write_landing("predictions", "p.jsonl", [prediction("late", predicted_at=at(0))])
    ingest_kind(con, landing, "predictions")
    assert build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE) == 1
    assert build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE) == 1


# -- the labels guard (labels_are_valid): invalid labels must trip it and stop a retrain ------


def write_labels(con, rows: list[tuple]) -> None:
    """``labeled.labeled_outcomes`` as given: (prediction_id, label, strength) per row."""
    con.execute(
        "CREATE OR REPLACE TABLE labeled.labeled_outcomes "
        "(prediction_id VARCHAR, label INTEGER, strength DOUBLE)"
    )
    con.executemany("INSERT INTO labeled.labeled_outcomes VALUES (?, ?, ?)", rows)


def test_label_problems_counts_each_kind_of_invalid_label(con):
    write_labels(con, [("ok-0", 0, 1.0), ("ok-1", 1, 0.25)])
    assert label_problems(con) == dict.fromkeys(
        ("null_labels", "labels_not_binary", "bad_strengths", "repeated_predictions"), 0
    )

    write_labels(
        con,
        [
            ("ok", 1, 1.0),
            ("null-label", None, 1.0),
            ("two", 2, 1.0),
            ("minus-one", -1, 1.0),
            ("zero-strength", 1, 0.0),
            ("negative-strength", 0, -0.5),
            ("null-strength", 0, None),
            ("twice", 1, 1.0),
            ("twice", 0, 1.0),
        ],
    )
    assert label_problems(con) == {
        "null_labels": 1,
        "labels_not_binary": 2,
        "bad_strengths": 3,
        "repeated_predictions": 1,
    }


def test_invalid_labels_fail_the_blocking_check_and_stop_the_retrain(simulated_dir, instance):
    """A policy that gives accept labels no strength: the settings allow it, the labels guard
    does not, and nothing downstream of labeled_outcomes runs."""
    zero_strength = {"labeling": {"policy": {"accept": {"strength": 0.0}}}}
    result = run_job(
        simulated_dir,
        instance,
        raise_on_error=False,
        as_of=SIMULATED_AS_OF.isoformat(),
        settings_overrides=zero_strength,
    )
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["labels_are_valid"].passed
    assert checks["labels_are_valid"].metadata["bad_strengths"].value > 0
    assert checks["labels_are_valid"].metadata["labels_not_binary"].value == 0
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "labeled_outcomes" in materialized  # the check runs on what was written ...
    # ... and its step fails the run before any step downstream of it starts
    assert [e.step_key for e in result.all_events if e.is_step_failure] == [
        "labeled_outcomes_labels_are_valid"
    ]
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert not started & {
        "training_set",
        "challenger_models",
        "evaluation_report",
        "champion_model",
    }
    assert "training_set_is_usable" not in checks
    assert local_registry(simulated_dir).versions() == []
