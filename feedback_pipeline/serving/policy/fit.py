"""How each stage of the serving policy fits its value on matured feedback: a calibration map
(scikit-learn's own calibrators, kept as plain data), learned rule weights, the threshold with
the fewest false positives at a true-positive retention, and the blend weight's trading rule;
and the figures a fitted value is judged by on held-out rows. scikit-learn is imported in the
functions that fit, so the code location loads without it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feedback_pipeline.metrics import calibration_error
from feedback_pipeline.served_policy import Calibration, RuleWeights
from feedback_pipeline.settings import ServingSettings


def fit_calibration(probability: np.ndarray, y: np.ndarray, method: str) -> Calibration:
    """``CalibratedClassifierCV(FrozenEstimator(...))`` on (score, label), as plain data."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    from feedback_pipeline.serving.policy.score_classifier import ScoreAsProbability

    frozen = FrozenEstimator(ScoreAsProbability().fit(probability[:, None], y))
    calibrated = CalibratedClassifierCV(frozen, method=method).fit(probability[:, None], y)
    calibrator = calibrated.calibrated_classifiers_[0].calibrators[0]
    if method == "isotonic":
        return Calibration(
            "isotonic",
            x=tuple(calibrator.X_thresholds_.tolist()),
            y=tuple(calibrator.y_thresholds_.tolist()),
        )
    return Calibration("sigmoid", a=float(calibrator.a_), b=float(calibrator.b_))


def fit_rule_weights(X: pd.DataFrame, y: np.ndarray, seed: int = 0) -> RuleWeights:
    """Logistic regression on the features (standardised), as weights on the raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(random_state=seed))
    model.fit(X.to_numpy(dtype=float), y)
    scaler, regression = model[0], model[1]
    coefficients = regression.coef_[0] / scaler.scale_
    intercept = float(regression.intercept_[0] - np.sum(coefficients * scaler.mean_))
    return RuleWeights(intercept, tuple(zip(X.columns, coefficients.tolist(), strict=True)))


def threshold_for_tp_retention(
    y: np.ndarray, score: np.ndarray, current: float, retention: float
) -> float:
    """The threshold with the fewest false positives among those keeping at least
    ``retention`` of the true positives the ``current`` threshold keeps (the highest such
    threshold on ties). scikit-learn's TunedThresholdClassifierCV has no such objective."""
    from sklearn.metrics import confusion_matrix_at_thresholds

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


def fit_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Log loss and calibration error of probabilities ``p``."""
    from sklearn.metrics import log_loss

    p = np.clip(p, 1e-6, 1 - 1e-6)
    return {
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "calibration_error": calibration_error(y, p),
    }


def decision_metrics(y: np.ndarray, served: pd.DataFrame) -> dict[str, float]:
    """What the served decisions did on labeled rows: FP rate, true positives kept, precision,
    and the log loss of the blended confidence."""
    from sklearn.metrics import log_loss

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
