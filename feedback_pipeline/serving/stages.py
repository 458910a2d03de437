"""The serving policy's stages, learned from matured feedback.

Rows are out-of-sample scores of the champion's procedure, in time order, cut in three: the
stages fit on the first half (recalibration, learned rule weights, the blend weight), the
threshold is picked on the next quarter on the score the other stages produce, and every stage
reports before and after on the last quarter, rows none was fitted on. A stage without enough
labels says so and changes nothing; a fitted value that is worse on the held-out rows is not
adopted either. What a policy does to a row is ``served_policy.serve``, the code that serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix_at_thresholds, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from feedback_pipeline.metrics import calibration_error
from feedback_pipeline.registry.served_policy import rule_score, serve
from feedback_pipeline.settings import ServingSettings

STAGES = ("threshold", "rule_weights", "recalibration", "blend_weight")
BLEND_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)


@dataclass(frozen=True)
class PolicyRows:
    """Labeled rows in time order with the out-of-sample probability of the model they serve."""

    frame: pd.DataFrame  # the features and rule_confidence, as a consumer sends them
    probability: np.ndarray
    y: np.ndarray
    ml_enhanced: np.ndarray  # 1.0, 0.0 or NaN (unknown)
    won: np.ndarray  # 1.0 win, 0.0 loss or breakeven, NaN (no outcome)
    features: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def part(self, start: float, stop: float) -> PolicyRows:
        rows = slice(int(round(start * len(self))), int(round(stop * len(self))))
        return PolicyRows(
            self.frame.iloc[rows],
            self.probability[rows],
            self.y[rows],
            self.ml_enhanced[rows],
            self.won[rows],
            self.features,
        )


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    changed: bool
    reason: str
    fitted_rows: int
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyProposal:
    policy: dict  # the values, as served_policy reads them
    current: dict  # the policy it would replace
    stages: tuple[StageResult, ...]
    before: dict[str, float]  # the current policy on the held-out rows
    after: dict[str, float]  # the proposal on the same rows
    rows: int
    held_out_rows: int
    held_out_y: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    held_out_scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(stage.changed for stage in self.stages)

    @property
    def improves(self) -> bool:
        """Not worse than the current policy on the held-out rows, in the log loss of the
        blended confidence and in the FP rate of the decisions, and better in one of them."""
        loss, fp = self.after["log_loss"], self.after["fp_rate"]
        was_loss, was_fp = self.before["log_loss"], self.before["fp_rate"]
        return loss <= was_loss and fp <= was_fp and (loss < was_loss or fp < was_fp)

    def verdict(self) -> str:
        """Why this proposal should or should not be served, in one line."""
        changed = [s.stage for s in self.stages if s.changed]
        if not changed:
            return "no stage changed a value"
        held_out = (
            f"on {self.held_out_rows} held-out rows log loss {self.before['log_loss']:.4f} -> "
            f"{self.after['log_loss']:.4f}, FP rate {self.before['fp_rate']:.1%} -> "
            f"{self.after['fp_rate']:.1%}"
        )
        better = "better than" if self.improves else "not better than"
        return f"{', '.join(changed)} changed; {held_out}: {better} the active policy"

    def stage_table(self) -> pd.DataFrame:
        return stage_table(self.stages)

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "stages": [asdict(s) for s in self.stages],
            "before": self.before,
            "after": self.after,
            "rows": self.rows,
            "held_out_rows": self.held_out_rows,
        }


def stage_table(stages: Sequence[StageResult]) -> pd.DataFrame:
    """One row per stage: did it run, did it change a value, why, before and after."""
    return pd.DataFrame(
        [
            {
                "stage": s.stage,
                "ran": s.ran,
                "changed": s.changed,
                "fitted_rows": s.fitted_rows,
                "before": _short(s.before),
                "after": _short(s.after),
                "reason": s.reason,
            }
            for s in stages
        ]
    )


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class ScoreAsProbability(ClassifierMixin, BaseEstimator):
    """A fitted model's probability as a classifier: its one input column is the score, so
    scikit-learn's calibration tools calibrate scores we already have."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        p = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def fit_calibration(probability: np.ndarray, y: np.ndarray, method: str) -> dict:
    """``CalibratedClassifierCV(FrozenEstimator(...))`` on (score, label), as plain data."""
    frozen = FrozenEstimator(ScoreAsProbability().fit(probability[:, None], y))
    calibrated = CalibratedClassifierCV(frozen, method=method).fit(probability[:, None], y)
    calibrator = calibrated.calibrated_classifiers_[0].calibrators[0]
    if method == "isotonic":
        return {
            "method": "isotonic",
            "x": calibrator.X_thresholds_.tolist(),
            "y": calibrator.y_thresholds_.tolist(),
        }
    return {"method": "sigmoid", "a": float(calibrator.a_), "b": float(calibrator.b_)}


def fit_rule_weights(X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> dict:
    """Logistic regression on the features (standardised), as weights on the raw features."""
    model = make_pipeline(StandardScaler(), LogisticRegression(random_state=seed))
    model.fit(X.to_numpy(dtype=float), y)
    scaler, regression = model[0], model[1]
    coefficients = regression.coef_[0] / scaler.scale_
    intercept = float(regression.intercept_[0] - np.sum(coefficients * scaler.mean_))
    return {
        "intercept": intercept,
        "coefficients": dict(zip(X.columns, coefficients.tolist(), strict=True)),
    }


def threshold_for_tp_retention(
    y: np.ndarray, score: np.ndarray, current: float, retention: float
) -> float:
    """The threshold with the fewest false positives among those keeping at least
    ``retention`` of the true positives the ``current`` threshold keeps (the highest such
    threshold on ties). scikit-learn's TunedThresholdClassifierCV has no such objective."""
    _, fps, _, tps, thresholds = confusion_matrix_at_thresholds(y, score)
    kept_now = np.sum((score >= current) & (y == 1))
    eligible = tps >= retention * kept_now
    if kept_now == 0 or not eligible.any():
        return current
    best = np.flatnonzero(eligible & (fps == fps[eligible].min()))
    return float(thresholds[best].max())


def blend_step(
    current: float, ml_win_rate: float, rule_win_rate: float, settings: ServingSettings
) -> tuple[float, str]:
    """The trading rule: +step when ML-enhanced signals win more often than rule-only ones by
    more than the margin, -step when they lose by more, clamped to [blend_min, blend_max]."""
    gap = round(ml_win_rate - rule_win_rate, 9)  # exactly the margin is within it
    if gap > settings.blend_margin:
        step, why = settings.blend_step, "ML-enhanced signals win more"
    elif gap < -settings.blend_margin:
        step, why = -settings.blend_step, "rule-only signals win more"
    else:
        step, why = 0.0, "win rates within the margin"
    new = float(np.clip(round(current + step, 6), settings.blend_min, settings.blend_max))
    return new, (
        f"{why} (ML-enhanced {ml_win_rate:.1%} vs rule-only {rule_win_rate:.1%}, gap "
        f"{gap:+.1%}, margin {settings.blend_margin:.0%}): {current:g} -> {new:g}"
    )


def _served(rows: PolicyRows, policy: dict, run_id: str | None) -> pd.DataFrame:
    return serve(rows.frame, rows.probability, np.ones(len(rows), dtype=bool), policy, run_id)


def _fit_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return {
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "calibration_error": calibration_error(y, p),
    }


def decision_metrics(y: np.ndarray, served: pd.DataFrame) -> dict[str, float]:
    """What the served decisions did on labeled rows: FP rate, true positives kept, precision,
    and the log loss of the blended confidence."""
    decision = served["decision"].to_numpy(dtype=bool)
    negatives = max(int(np.sum(y == 0)), 1)
    fp = int(np.sum(decision & (y == 0)))
    tp = int(np.sum(decision & (y == 1)))
    blended = np.clip(np.nan_to_num(served["blended_confidence"].to_numpy(), nan=0.5), 1e-6, 1)
    return {
        "fp_rate": fp / negatives,
        "true_positives": float(tp),
        "precision": tp / max(tp + fp, 1),
        "log_loss": float(log_loss(y, np.minimum(blended, 1 - 1e-6), labels=[0, 1])),
    }


def propose_policy(
    rows: PolicyRows,
    current: dict,
    model_run_id: str,
    settings: ServingSettings,
    seed: int = 0,
) -> PolicyProposal:
    """Every stage in turn on ``rows``; returns the proposed policy beside the current one."""
    fit, tune, held_out = rows.part(0.0, 0.5), rows.part(0.5, 0.75), rows.part(0.75, 1.0)
    minimums = settings.min_labels
    policy = {**current, "model_run_id": model_run_id}
    if current.get("model_run_id") != model_run_id:
        policy["calibration"] = None  # a calibration map belongs to the model it was fitted for
    results: dict[str, StageResult] = {}

    # Recalibration: isotonic with enough labels, sigmoid below that.
    n = len(fit)
    if n < minimums.sigmoid or len(np.unique(fit.y)) < 2:
        results["recalibration"] = StageResult(
            "recalibration", False, False,
            f"{n} labels to fit on, fewer than {minimums.sigmoid} (sigmoid) or one class only",
            n,
        )  # fmt: skip
    else:
        method = "isotonic" if n >= minimums.isotonic else "sigmoid"
        candidate = fit_calibration(fit.probability, fit.y, method)
        before = _fit_metrics(held_out.y, _served(held_out, policy, model_run_id)["calibrated"])
        trial = {**policy, "calibration": candidate}
        after = _fit_metrics(held_out.y, _served(held_out, trial, model_run_id)["calibrated"])
        better = after["log_loss"] <= before["log_loss"]
        if better:
            policy = trial
        results["recalibration"] = StageResult(
            "recalibration", True, better,
            f"{method} ({n} labels; isotonic from {minimums.isotonic})"
            + ("" if better else ": not adopted, worse on held-out rows"),
            n, before, after,
        )  # fmt: skip

    # Learned rule weights: logistic regression on the features.
    complete = np.isfinite(fit.frame[rows.features].to_numpy(dtype=float)).all(axis=1)
    n = int(complete.sum())
    if n < minimums.rule_weights or len(np.unique(fit.y[complete])) < 2:
        results["rule_weights"] = StageResult(
            "rule_weights", False, False,
            f"{n} labeled rows with every feature, fewer than {minimums.rule_weights}",
            n,
        )  # fmt: skip
    else:
        candidate = fit_rule_weights(fit.frame[rows.features][complete], fit.y[complete], seed)
        trial = {**policy, "rule_weights": candidate}
        before = _rule_metrics(held_out, policy)
        after = _rule_metrics(held_out, trial)
        better = bool(after) and (not before or after["log_loss"] <= before["log_loss"])
        if better:
            policy = trial
        results["rule_weights"] = StageResult(
            "rule_weights", True, better,
            "logistic regression on the features"
            + ("" if better else ": not adopted, no better than the rule score on held-out rows"),
            n, before, after,
        )  # fmt: skip

    # Blend weight: the trading rule on win rates; the log-loss optimum reported beside it.
    has_outcome = np.isfinite(fit.won) & np.isfinite(fit.ml_enhanced)
    ml = has_outcome & (fit.ml_enhanced == 1)
    rule_only = has_outcome & (fit.ml_enhanced == 0)
    if min(ml.sum(), rule_only.sum()) < minimums.blend:
        results["blend_weight"] = StageResult(
            "blend_weight", False, False,
            f"{int(ml.sum())} ML-enhanced and {int(rule_only.sum())} rule-only outcomes; "
            f"each needs {minimums.blend}",
            int(has_outcome.sum()),
        )  # fmt: skip
    else:
        new, why = blend_step(
            policy["blend_weight"], fit.won[ml].mean(), fit.won[rule_only].mean(), settings
        )
        optimum = _log_loss_optimum(fit, policy, model_run_id)
        trial = {**policy, "blend_weight": new}
        before = _blend_metrics(held_out, policy, model_run_id)
        after = _blend_metrics(held_out, trial, model_run_id)
        changed = new != policy["blend_weight"]
        policy = trial
        results["blend_weight"] = StageResult(
            "blend_weight", True, changed,
            f"{why}; log-loss optimum on the fitting rows: {optimum:g}",
            int(has_outcome.sum()), before, {**after, "log_loss_optimum": optimum},
        )  # fmt: skip

    # Decision threshold, on the next slice, on the score the stages above produce.
    n = len(tune)
    if n < minimums.threshold or len(np.unique(tune.y)) < 2:
        results["threshold"] = StageResult(
            "threshold", False, False,
            f"{n} labels to pick it on, fewer than {minimums.threshold} or one class only", n,
        )  # fmt: skip
    else:
        score = _served(tune, policy, model_run_id)["blended_confidence"].to_numpy()
        usable = np.isfinite(score)
        candidate = threshold_for_tp_retention(
            tune.y[usable], score[usable], policy["threshold"], settings.tp_retention
        )
        trial = {**policy, "threshold": candidate}
        before = decision_metrics(held_out.y, _served(held_out, policy, model_run_id))
        after = decision_metrics(held_out.y, _served(held_out, trial, model_run_id))
        kept = after["true_positives"] / max(before["true_positives"], 1.0)
        after["tp_retention"] = kept
        better = (
            candidate != policy["threshold"]
            and after["fp_rate"] <= before["fp_rate"]
            and kept >= settings.tp_retention
        )
        if better:
            policy = trial
        results["threshold"] = StageResult(
            "threshold", True, better,
            f"{policy['threshold']:.4g}: the fewest false positives keeping >= "
            f"{settings.tp_retention:.0%} of true positives"
            + ("" if better else f" (candidate {candidate:.4g} not adopted on held-out rows)"),
            n, before, after,
        )  # fmt: skip

    served_now = _served(held_out, current, model_run_id)
    served_next = _served(held_out, policy, model_run_id)
    return PolicyProposal(
        policy=policy,
        current=current,
        stages=tuple(results[name] for name in STAGES),
        before=decision_metrics(held_out.y, served_now),
        after=decision_metrics(held_out.y, served_next),
        rows=len(rows),
        held_out_rows=len(held_out),
        held_out_y=held_out.y,
        held_out_scores={
            "current": served_now["blended_confidence"].to_numpy(),
            "proposed": served_next["blended_confidence"].to_numpy(),
        },
    )


def _rule_metrics(rows: PolicyRows, policy: dict) -> dict[str, float]:
    score = rule_score(rows.frame, policy["rule_weights"])
    known = np.isfinite(score)
    if known.sum() < 2 or len(np.unique(rows.y[known])) < 2:
        return {}
    return {**_fit_metrics(rows.y[known], score[known]), "rows": float(known.sum())}


def _blend_metrics(rows: PolicyRows, policy: dict, run_id: str) -> dict[str, float]:
    served = _served(rows, policy, run_id)
    return {
        "blend_weight": policy["blend_weight"],
        **_fit_metrics(rows.y, served["blended_confidence"].to_numpy()),
    }


def _log_loss_optimum(rows: PolicyRows, policy: dict, run_id: str) -> float:
    losses = [
        _fit_metrics(
            rows.y,
            _served(rows, {**policy, "blend_weight": w}, run_id)["blended_confidence"].to_numpy(),
        )["log_loss"]
        for w in BLEND_GRID
    ]
    return float(BLEND_GRID[int(np.argmin(losses))])
