"""The serving policy's stages, learned from matured feedback, as one table walked in order.

Rows are out-of-sample scores of the champion's procedure, in time order, cut in three: the
stages fit on the first half (recalibration, learned rule weights, the blend weight), the
threshold is picked on the next quarter on the score the other stages produce, and every stage
reports before and after on the last quarter, rows none was fitted on. A stage without enough
rows (its ``serving.min_labels`` setting) says so and changes nothing; a fitted value that is
worse on the held-out rows is not adopted either. What a policy does to a row is
``served_policy.serve``, the code that serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from feedback_pipeline.served_policy import ServingPolicy, rule_score, serve
from feedback_pipeline.serving.policy.fit import (
    blend_step,
    decision_metrics,
    fit_calibration,
    fit_metrics,
    fit_rule_weights,
    threshold_for_tp_retention,
)
from feedback_pipeline.serving.policy.proposal import PolicyProposal, PolicyRows, StageResult
from feedback_pipeline.settings import ServingSettings

STAGES = ("threshold", "rule_weights", "recalibration", "blend_weight")  # as reported
BLEND_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)


@dataclass(frozen=True)
class Fitting:
    """The rows cut in three, and what every stage reads besides them."""

    fit: PolicyRows  # the first half: recalibration, rule weights, blend weight
    tune: PolicyRows  # the next quarter: the threshold
    held_out: PolicyRows  # the last quarter: every stage's before and after
    settings: ServingSettings
    model_run_id: str
    seed: int

    def served(self, rows: PolicyRows, policy: ServingPolicy) -> pd.DataFrame:
        scorable = np.ones(len(rows), dtype=bool)
        return serve(rows.frame, rows.probability, scorable, policy, self.model_run_id)


@dataclass(frozen=True)
class Candidate:
    value: Any  # for the stage's policy field
    note: str = ""  # how it was fitted, for the stage's reason


@dataclass(frozen=True)
class Judged:
    adopted: bool
    changed: bool
    reason: str
    before: dict[str, float]
    after: dict[str, float]


@dataclass(frozen=True)
class Stage:
    """One stage: the policy field it sets, its minimum-rows setting, the rows it fits on
    (with the reason when they are too few), how it fits a value and how it is judged."""

    name: str
    field: str  # the ServingPolicy field it sets
    minimum: str  # its setting in serving.min_labels
    rows: Callable[[Fitting, int], tuple[int, str | None]]  # (fitted rows, why too few)
    fit: Callable[[Fitting, ServingPolicy], Candidate]
    judge: Callable[[Fitting, ServingPolicy, ServingPolicy, Candidate], Judged]


def _too_few(n: int, minimum: int, classes: np.ndarray) -> bool:
    return n < minimum or len(np.unique(classes)) < 2


# Recalibration: isotonic with enough labels, sigmoid below that.
def _recalibration_rows(f: Fitting, minimum: int) -> tuple[int, str | None]:
    n = len(f.fit)
    if _too_few(n, minimum, f.fit.y):
        return n, f"{n} labels to fit on, fewer than {minimum} (sigmoid) or one class only"
    return n, None


def _fit_recalibration(f: Fitting, policy: ServingPolicy) -> Candidate:
    n, isotonic = len(f.fit), f.settings.min_labels.isotonic
    method = "isotonic" if n >= isotonic else "sigmoid"
    calibration = fit_calibration(f.fit.probability, f.fit.y, method)
    return Candidate(calibration, f"{method} ({n} labels; isotonic from {isotonic})")


def _judge_recalibration(
    f: Fitting, policy: ServingPolicy, trial: ServingPolicy, candidate: Candidate
) -> Judged:
    before = fit_metrics(f.held_out.y, f.served(f.held_out, policy)["calibrated"])
    after = fit_metrics(f.held_out.y, f.served(f.held_out, trial)["calibrated"])
    better = after["log_loss"] <= before["log_loss"]
    why = "" if better else ": not adopted, worse on held-out rows"
    return Judged(better, better, candidate.note + why, before, after)


# Learned rule weights: logistic regression on the features.
def _complete(rows: PolicyRows) -> np.ndarray:
    return np.isfinite(rows.frame[rows.features].to_numpy(dtype=float)).all(axis=1)


def _rule_weights_rows(f: Fitting, minimum: int) -> tuple[int, str | None]:
    complete = _complete(f.fit)
    n = int(complete.sum())
    if _too_few(n, minimum, f.fit.y[complete]):
        return n, f"{n} labeled rows with every feature, fewer than {minimum}"
    return n, None


def _fit_rule_weights(f: Fitting, policy: ServingPolicy) -> Candidate:
    complete = _complete(f.fit)
    return Candidate(
        fit_rule_weights(f.fit.frame[f.fit.features][complete], f.fit.y[complete], f.seed)
    )


def _rule_metrics(rows: PolicyRows, policy: ServingPolicy) -> dict[str, float]:
    score = rule_score(rows.frame, policy.rule_weights)
    known = np.isfinite(score)
    if known.sum() < 2 or len(np.unique(rows.y[known])) < 2:
        return {}
    return {**fit_metrics(rows.y[known], score[known]), "rows": float(known.sum())}


def _judge_rule_weights(
    f: Fitting, policy: ServingPolicy, trial: ServingPolicy, candidate: Candidate
) -> Judged:
    before, after = _rule_metrics(f.held_out, policy), _rule_metrics(f.held_out, trial)
    better = bool(after) and (not before or after["log_loss"] <= before["log_loss"])
    why = "" if better else ": not adopted, no better than the rule score on held-out rows"
    return Judged(better, better, "logistic regression on the features" + why, before, after)


# Blend weight: the trading rule on win rates; the log-loss optimum reported beside it.
def _outcomes(rows: PolicyRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with an outcome, and those of them ML-enhanced and rule-only."""
    has_outcome = np.isfinite(rows.won) & np.isfinite(rows.ml_enhanced)
    return has_outcome, has_outcome & (rows.ml_enhanced == 1), has_outcome & (rows.ml_enhanced == 0)


def _blend_weight_rows(f: Fitting, minimum: int) -> tuple[int, str | None]:
    has_outcome, ml, rule_only = _outcomes(f.fit)
    if min(ml.sum(), rule_only.sum()) < minimum:
        return int(has_outcome.sum()), (
            f"{int(ml.sum())} ML-enhanced and {int(rule_only.sum())} rule-only outcomes; "
            f"each needs {minimum}"
        )
    return int(has_outcome.sum()), None


def _fit_blend_weight(f: Fitting, policy: ServingPolicy) -> Candidate:
    _, ml, rule_only = _outcomes(f.fit)
    won = f.fit.won
    return Candidate(
        *blend_step(policy.blend_weight, won[ml].mean(), won[rule_only].mean(), f.settings)
    )


def _blend_metrics(f: Fitting, rows: PolicyRows, policy: ServingPolicy) -> dict[str, float]:
    served = f.served(rows, policy)
    return {
        "blend_weight": policy.blend_weight,
        **fit_metrics(rows.y, served["blended_confidence"].to_numpy()),
    }


def _log_loss_optimum(f: Fitting, policy: ServingPolicy) -> float:
    losses = [
        fit_metrics(
            f.fit.y,
            f.served(f.fit, replace(policy, blend_weight=w))["blended_confidence"].to_numpy(),
        )["log_loss"]
        for w in BLEND_GRID
    ]
    return float(BLEND_GRID[int(np.argmin(losses))])


def _judge_blend_weight(
    f: Fitting, policy: ServingPolicy, trial: ServingPolicy, candidate: Candidate
) -> Judged:
    """Always adopted: the trading rule's step is the value (unchanged within the margin)."""
    optimum = _log_loss_optimum(f, policy)
    before, after = _blend_metrics(f, f.held_out, policy), _blend_metrics(f, f.held_out, trial)
    reason = f"{candidate.note}; log-loss optimum on the fitting rows: {optimum:g}"
    changed = trial.blend_weight != policy.blend_weight
    return Judged(True, changed, reason, before, {**after, "log_loss_optimum": optimum})


# Decision threshold, on the next slice, on the score the stages above produce.
def _threshold_rows(f: Fitting, minimum: int) -> tuple[int, str | None]:
    n = len(f.tune)
    if _too_few(n, minimum, f.tune.y):
        return n, f"{n} labels to pick it on, fewer than {minimum} or one class only"
    return n, None


def _fit_threshold(f: Fitting, policy: ServingPolicy) -> Candidate:
    score = f.served(f.tune, policy)["blended_confidence"].to_numpy()
    usable = np.isfinite(score)
    retention = f.settings.tp_retention
    return Candidate(
        threshold_for_tp_retention(f.tune.y[usable], score[usable], policy.threshold, retention)
    )


def _judge_threshold(
    f: Fitting, policy: ServingPolicy, trial: ServingPolicy, candidate: Candidate
) -> Judged:
    before = decision_metrics(f.held_out.y, f.served(f.held_out, policy))
    after = decision_metrics(f.held_out.y, f.served(f.held_out, trial))
    kept = after["true_positives"] / max(before["true_positives"], 1.0)
    after["tp_retention"] = kept
    retention = f.settings.tp_retention
    better = (
        candidate.value != policy.threshold and after["fp_rate"] <= before["fp_rate"]
        and kept >= retention
    )  # fmt: skip
    reason = (
        f"{(trial if better else policy).threshold:.4g}: the fewest false positives keeping "
        f">= {retention:.0%} of true positives"
        + ("" if better else f" (candidate {candidate.value:.4g} not adopted on held-out rows)")
    )
    return Judged(better, better, reason, before, after)


# In the order they are fitted: the threshold last, on the score the others produce.
STAGE_TABLE = (
    Stage("recalibration", "calibration", "sigmoid",
          _recalibration_rows, _fit_recalibration, _judge_recalibration),
    Stage("rule_weights", "rule_weights", "rule_weights",
          _rule_weights_rows, _fit_rule_weights, _judge_rule_weights),
    Stage("blend_weight", "blend_weight", "blend",
          _blend_weight_rows, _fit_blend_weight, _judge_blend_weight),
    Stage("threshold", "threshold", "threshold",
          _threshold_rows, _fit_threshold, _judge_threshold),
)  # fmt: skip


def propose_policy(
    rows: PolicyRows,
    current: ServingPolicy,
    model_run_id: str,
    settings: ServingSettings,
    seed: int = 0,
) -> PolicyProposal:
    """Every stage in turn on ``rows``; returns the proposed policy beside the current one."""
    f = Fitting(
        rows.part(0.0, 0.5), rows.part(0.5, 0.75), rows.part(0.75, 1.0),
        settings, model_run_id, seed,
    )  # fmt: skip
    policy = replace(current, model_run_id=model_run_id)
    if current.model_run_id != model_run_id:
        # a calibration map belongs to the model it was fitted for
        policy = replace(policy, calibration=None)
    results: dict[str, StageResult] = {}
    for stage in STAGE_TABLE:
        fitted_rows, too_few = stage.rows(f, getattr(settings.min_labels, stage.minimum))
        if too_few is not None:
            results[stage.name] = StageResult(stage.name, False, False, too_few, fitted_rows)
            continue
        candidate = stage.fit(f, policy)
        trial = replace(policy, **{stage.field: candidate.value})
        judged = stage.judge(f, policy, trial, candidate)
        results[stage.name] = StageResult(
            stage.name, True, judged.changed, judged.reason, fitted_rows,
            judged.before, judged.after,
        )  # fmt: skip
        if judged.adopted:
            policy = trial

    served_now, served_next = f.served(f.held_out, current), f.served(f.held_out, policy)
    return PolicyProposal(
        policy=policy,
        current=current,
        stages=tuple(results[name] for name in STAGES),
        before=decision_metrics(f.held_out.y, served_now),
        after=decision_metrics(f.held_out.y, served_next),
        rows=len(rows),
        held_out_rows=len(f.held_out),
        held_out_y=f.held_out.y,
        held_out_scores={
            "current": served_now["blended_confidence"].to_numpy(),
            "proposed": served_next["blended_confidence"].to_numpy(),
        },
    )
