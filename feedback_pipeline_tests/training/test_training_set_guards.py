"""The training-set guard (the ``training_set_is_usable`` check) on sets built to trip it: one
class in train, an empty validation split, a holdout too small for the gate; and in a real
retrain_job, the failing check stops training."""

from __future__ import annotations

import pytest

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.training.dataset import training_set_problems, training_set_table
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.tables import RAW_BASELINE_EXAMPLES
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF, run_job

HASH = "0123456789abcdef"


def write_set(con, splits: dict[str, list[int]]) -> None:
    """A training set table with these labels per split (the columns the guard reads)."""
    rows = [(split, label) for split, labels in splits.items() for label in labels]
    con.execute(f"CREATE TABLE {training_set_table(HASH)} (split VARCHAR, label INTEGER)")
    if rows:
        con.executemany(f"INSERT INTO {training_set_table(HASH)} VALUES (?, ?)", rows)


USABLE = {"train": [0, 1] * 20, "validation": [0, 1] * 5, "holdout": [0, 1] * 5}


def test_a_usable_set_has_no_problem_and_counts_its_splits(con):
    write_set(con, USABLE)
    verdict = training_set_problems(con, 10, HASH)
    assert verdict.problems == []
    assert verdict.counts == {
        "train_rows": 40,
        "train_positive": 20,
        "validation_rows": 10,
        "holdout_rows": 10,
    }
    assert verdict.holdout_rule == "holdout has 10 rows (>= min_holdout_rows=10)"


@pytest.mark.parametrize(("label", "positive"), [(1, 40), (0, 0)])
def test_a_single_class_in_train_is_a_problem(con, label, positive):
    write_set(con, {**USABLE, "train": [label] * 40})
    (problem,) = training_set_problems(con, 10, HASH).problems
    assert problem.startswith(f"train has a single class ({positive} positive of 40 rows)")
    assert "nothing to learn" in problem


def test_an_empty_validation_split_is_a_problem(con):
    write_set(con, {"train": USABLE["train"], "holdout": USABLE["holdout"]})
    verdict = training_set_problems(con, 10, HASH)
    assert verdict.problems == ["validation is empty: challengers cannot be chosen"]
    assert verdict.counts["validation_rows"] == 0


def test_an_empty_set_has_both_problems(con):
    write_set(con, {})
    problems = training_set_problems(con, 10, HASH).problems
    assert len(problems) == 2
    assert problems[0].startswith("train has a single class (0 positive of 0 rows)")
    assert problems[1].startswith("validation is empty")


def test_a_small_holdout_is_no_problem_but_the_rule_says_the_gate_will_refuse(con):
    write_set(con, USABLE)
    verdict = training_set_problems(con, 11, HASH)
    assert verdict.problems == []
    assert verdict.holdout_rule.startswith(
        "holdout has 10 rows, fewer than gate.min_holdout_rows=11: the gate will refuse"
    )


def test_a_single_class_training_set_fails_the_blocking_check_and_stops_the_retrain(
    simulated_dir, instance
):
    """Every label positive (a feed that only reports good news): the training set is built,
    its blocking check fails, and no challenger is trained or promoted."""
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    con.execute(f"UPDATE {RAW_BASELINE_EXAMPLES} SET label = 1")
    con.close()
    negative = ("loss", "breakeven", "reject", "undo", "rate_bad")
    good_news_only = {"labeling": {"policy": {signal: {"label": 1} for signal in negative}}}
    result = run_job(
        simulated_dir,
        instance,
        raise_on_error=False,
        as_of=SIMULATED_AS_OF.isoformat(),
        settings_overrides=good_news_only,
    )
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["labels_are_valid"].passed
    usable = checks["training_set_is_usable"]
    assert not usable.passed
    assert usable.description.startswith("train has a single class (")
    assert usable.metadata["train_positive"].value == usable.metadata["train_rows"].value > 0
    # the check's step fails the run before any challenger step starts (a challenger fit on one
    # class would fail on its own: that is not the guard)
    assert [e.step_key for e in result.all_events if e.is_step_failure] == [
        "training_set_training_set_is_usable"
    ]
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert {"labeled_outcomes", "training_set"} <= started
    assert not started & {"challenger_models", "evaluation_report", "champion_model"}
    assert local_registry(simulated_dir).versions() == []
