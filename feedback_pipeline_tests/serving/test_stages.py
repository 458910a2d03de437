"""The serving policy's stages on synthetic scores whose right answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from feedback_pipeline.metrics import calibration_error
from feedback_pipeline.served_policy import ServingPolicy, calibrate, serve
from feedback_pipeline.serving.policy.fit import (
    blend_step,
    fit_calibration,
    threshold_for_tp_retention,
)
from feedback_pipeline.serving.policy.proposal import PolicyRows
from feedback_pipeline.serving.policy.stages import propose_policy
from feedback_pipeline.settings import ServingSettings

RUN_ID = "run-of-the-champion"


def overconfident_rows(n: int, seed: int = 0) -> PolicyRows:
    """Labels drawn from a true probability; the model reports it three times too sharp."""
    rng = np.random.default_rng(seed)
    momentum = rng.normal(size=n)
    true_logit = 0.8 * momentum
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    probability = 1 / (1 + np.exp(-3 * true_logit))
    rule = np.clip(0.5 + 0.1 * momentum + rng.normal(scale=0.2, size=n), 0, 1)
    frame = pd.DataFrame({"momentum": momentum, "rule_confidence": rule})
    return PolicyRows(
        frame=frame,
        probability=probability,
        y=y,
        ml_enhanced=np.where(rng.random(n) < 0.5, 1.0, 0.0),
        won=y.astype(float),
        features=["momentum"],
    )


def test_the_threshold_keeps_95_percent_of_true_positives_with_the_fewest_false_positives():
    positives = np.linspace(0.40, 1.00, 100)
    negatives = np.linspace(0.00, 0.70, 100)
    score = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(100, int), np.zeros(100, int)])

    chosen = threshold_for_tp_retention(y, score, current=0.0, retention=0.95)

    # The optimum: drop the five lowest-scoring positives and nothing more.
    assert chosen == pytest.approx(np.sort(positives)[5])
    _, fp, _, tp = confusion_matrix(y, score >= chosen).ravel()
    assert tp == 95
    assert fp == np.sum(negatives >= np.sort(positives)[5])
    # A stricter retention keeps more positives and so admits more false positives.
    assert threshold_for_tp_retention(y, score, 0.0, 1.0) == pytest.approx(positives.min())


def test_a_stage_below_its_minimum_says_so_and_changes_nothing():
    rows = overconfident_rows(30)  # the threshold is picked on a quarter: 7 rows
    settings = ServingSettings()
    current = ServingPolicy()

    proposal = propose_policy(rows, current, RUN_ID, settings)

    stages = {s.stage: s for s in proposal.stages}
    assert not stages["threshold"].ran and not stages["threshold"].changed
    assert stages["threshold"].reason.startswith("7 labels to pick it on, fewer than 10")
    assert not stages["rule_weights"].ran
    assert "fewer than 50" in stages["rule_weights"].reason
    assert proposal.policy.threshold == current.threshold
    assert proposal.policy.rule_weights is None


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_recalibration_lowers_the_calibration_error_on_held_out_rows(method):
    rows = overconfident_rows(4000, seed=1)
    fit, held_out = rows.part(0.0, 0.5), rows.part(0.5, 1.0)

    calibration = fit_calibration(fit.probability, fit.y, method)

    before = calibration_error(held_out.y, held_out.probability)
    after = calibration_error(held_out.y, calibrate(held_out.probability, calibration))
    assert before > 0.1
    assert after < before / 2


def test_the_recalibration_stage_picks_isotonic_from_200_labels_and_improves_held_out_rows():
    proposal = propose_policy(overconfident_rows(1000, seed=2), ServingPolicy(), RUN_ID,
                              ServingSettings())  # fmt: skip
    stage = {s.stage: s for s in proposal.stages}["recalibration"]
    assert stage.changed and stage.reason.startswith("isotonic")
    assert stage.after["calibration_error"] < stage.before["calibration_error"]
    assert proposal.policy.calibration.method == "isotonic"

    small = propose_policy(overconfident_rows(120, seed=2), ServingPolicy(), RUN_ID,
                           ServingSettings())  # fmt: skip
    assert {s.stage: s for s in small.stages}["recalibration"].reason.startswith("sigmoid")


@pytest.mark.parametrize(
    ("current", "ml", "rule", "expected"),
    [
        (0.6, 0.60, 0.50, 0.7),  # ML-enhanced wins by 10 points: +0.1
        (0.7, 0.60, 0.50, 0.7),  # clamped at the top
        (0.65, 0.60, 0.50, 0.7),  # clamped, not 0.75
        (0.3, 0.40, 0.50, 0.2),  # rule-only wins by 10 points: -0.1
        (0.1, 0.40, 0.50, 0.1),  # clamped at the bottom
        (0.15, 0.40, 0.50, 0.1),  # clamped, not 0.05
        (0.4, 0.55, 0.50, 0.4),  # within the margin: unchanged
        (0.4, 0.50, 0.55, 0.4),
    ],
)
def test_the_blend_rule_steps_and_clamps(current, ml, rule, expected):
    new, reason = blend_step(current, ml, rule, ServingSettings())
    assert new == pytest.approx(expected)
    assert f"-> {expected:g}" in reason


def test_a_row_missing_a_feature_falls_back_to_rule_confidence():
    frame = pd.DataFrame({"momentum": [0.2, np.nan], "rule_confidence": [0.3, 0.8]})
    served = serve(frame, np.array([0.9, np.nan]), np.array([True, False]), ServingPolicy(), None)
    assert served["fallback"].tolist() == [False, True]
    assert served["blended_confidence"].tolist() == pytest.approx([0.6 * 0.9 + 0.4 * 0.3, 0.8])
    assert served["decision"].tolist() == [True, True]
    assert np.isnan(served["probability"].iloc[1])
