"""The serving policy's stages on synthetic scores whose right answer is known."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from feedback_pipeline.metrics import calibration_error
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.served_policy import ServingPolicy, calibrate, rule_score, serve
from feedback_pipeline.serving.policy.fit import (
    blend_step,
    fit_calibration,
    fit_rule_weights,
    threshold_for_tp_retention,
)
from feedback_pipeline.serving.policy.proposal import PolicyProposal, PolicyRows, StageResult
from feedback_pipeline.serving.policy.stages import propose_policy
from feedback_pipeline.serving.policy.store import active_policy
from feedback_pipeline.settings import ServingSettings
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF, run_job

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


def test_fit_rule_weights_recovers_known_weights_on_the_raw_features():
    """Labels from a known logistic rule on features of very different scales: the weights come
    back on the raw features (not the standardised ones), each in its direction."""
    rng = np.random.default_rng(4)
    n = 20_000
    X = pd.DataFrame(
        {
            "momentum": rng.normal(0.0, 1.0, n),
            "volume": rng.normal(1000.0, 200.0, n),
            "noise": rng.normal(5.0, 3.0, n),
        }
    )
    logit = -0.5 + 1.5 * X["momentum"] - 0.01 * (X["volume"] - 1000.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    weights = fit_rule_weights(X, y.to_numpy())

    coefficients = dict(weights.coefficients)
    assert list(coefficients) == ["momentum", "volume", "noise"]
    assert coefficients["momentum"] == pytest.approx(1.5, rel=0.1)
    assert coefficients["volume"] == pytest.approx(-0.01, rel=0.1)
    assert abs(coefficients["noise"]) < 0.02
    assert weights.intercept == pytest.approx(-0.5 + 10.0, abs=1.0)
    truth = 1 / (1 + np.exp(-logit.to_numpy()))
    assert np.abs(rule_score(X, weights) - truth).max() < 0.05


def test_the_rule_weights_stage_learns_the_feature_the_rule_confidence_misses():
    """rule_confidence is a coin toss and the label follows momentum: the stage adopts weights
    that rise with momentum, better than rule_confidence on the held-out rows."""
    rows = overconfident_rows(2000, seed=5)
    rows.frame["rule_confidence"] = np.random.default_rng(6).random(len(rows))

    proposal = propose_policy(rows, ServingPolicy(), RUN_ID, ServingSettings())

    stage = {s.stage: s for s in proposal.stages}["rule_weights"]
    assert stage.ran and stage.changed, stage.reason
    assert stage.reason == "logistic regression on the features"
    assert stage.after["log_loss"] < stage.before["log_loss"]
    ((name, weight),) = proposal.policy.rule_weights.coefficients
    assert name == "momentum" and weight == pytest.approx(0.8, abs=0.25)


def proposal_with(before: tuple[float, float], after: tuple[float, float]) -> PolicyProposal:
    """A proposal whose held-out (log loss, FP rate) go from ``before`` to ``after``."""
    return PolicyProposal(
        policy=ServingPolicy(threshold=0.6),
        current=ServingPolicy(),
        stages=(StageResult("threshold", True, True, "picked", 100),),
        before={"log_loss": before[0], "fp_rate": before[1]},
        after={"log_loss": after[0], "fp_rate": after[1]},
        rows=400,
        held_out_rows=100,
    )


@pytest.mark.parametrize(
    ("after", "improves"),
    [
        ((0.50, 0.20), True),  # better in both
        ((0.50, 0.30), True),  # better log loss, same FP rate
        ((0.60, 0.20), True),  # same log loss, lower FP rate
        ((0.60, 0.30), False),  # the same: no better
        ((0.50, 0.31), False),  # better log loss bought with more false positives
        ((0.61, 0.20), False),  # fewer false positives bought with a worse log loss
        ((0.70, 0.40), False),  # worse in both
    ],
)
def test_a_proposal_improves_only_when_no_worse_in_both_and_better_in_one(after, improves):
    proposal = proposal_with((0.60, 0.30), after)
    assert proposal.improves is improves
    better = "better than" if improves else "not better than"
    assert proposal.verdict().endswith(f": {better} the active policy")


def test_serving_mode_apply_serves_a_proposal_that_improves_and_only_such_a_one(
    championed_dir, instance
):
    """serving_policy in a real run on the championed data: under serving.mode apply the
    proposal that beats the active policy on held-out rows is applied (published to the
    registry, ledgered); one that changes a value but is worse is only recorded."""

    def materialize(serving: dict):
        result = run_job(
            championed_dir,
            instance,
            "analytics_job",
            ["serving_policy"],
            as_of=SIMULATED_AS_OF.isoformat(),
            settings_overrides={"serving": serving},
        )
        (materialization,) = result.asset_materializations_for_node("serving_policy")
        return materialization.metadata["decision"].value

    def state() -> tuple[int, list[tuple], list[tuple]]:
        con = duckdb.connect(str(championed_dir / "warehouse.duckdb"), read_only=True)
        try:
            statuses = con.execute(
                "SELECT policy_version, status FROM ops.serving_policies ORDER BY 1"
            ).fetchall()
            applied = con.execute(
                "SELECT reason, trigger FROM ops.retraining_events WHERE action = 'policy_applied'"
            ).fetchall()
            return active_policy(con).version, statuses, applied
        finally:
            con.close()

    decision = materialize({"mode": "apply"})
    assert decision.startswith("v1 applied: ") and decision.endswith(": better than the active "
                                                                     "policy")  # fmt: skip
    version, statuses, applied = state()
    assert (version, statuses) == (1, [(1, "active")])
    ((reason, trigger),) = applied
    assert reason.startswith("serving policy v0 -> v1: serving.mode is apply; ")
    assert trigger == "serving_policy"
    assert local_registry(championed_dir).active_policy_version() == 1

    # Only the blend weight may change, and it must go to 1 (the model's probability alone): a
    # change that is worse on the held-out rows (in log loss and FP rate) is recorded, not served.
    stages_off = {"threshold": 10**6, "rule_weights": 10**6, "sigmoid": 10**6, "isotonic": 10**6}
    worse = materialize(
        {"mode": "apply", "blend_min": 1.0, "blend_max": 1.0, "min_labels": stages_off}
    )
    assert worse.startswith("v2 proposed, not applied: blend_weight changed; ")
    assert worse.endswith(": not better than the active policy")
    version, statuses, applied = state()
    assert (version, statuses) == (1, [(1, "active"), (2, "proposed")])
    assert len(applied) == 1
    assert local_registry(championed_dir).active_policy_version() == 1
