"""Holdout metrics and bootstrap confidence intervals (DESIGN section 8), vectorised numpy."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, f1_score, log_loss, roc_auc_score

METRICS = (
    "accuracy",
    "f1_weighted",
    "roc_auc",
    "log_loss",
    "brier",
    "calibration_error",
    "precision",
    "fp_rate",
)
DELTA_METRICS = ("accuracy", "f1_weighted", "roc_auc")


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(
        np.bincount(which, weights=y, minlength=bins)
        - np.bincount(which, weights=p, minlength=bins)
    )
    return float(gaps.sum() / max(counts.sum(), 1))


def classification_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float = 0.5, weights: np.ndarray | None = None
) -> dict[str, float]:
    y = np.asarray(y)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    predicted = (p >= threshold).astype(int)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float)
    positives = predicted == 1
    false_positive = positives & (y == 0)
    two_classes = len(np.unique(y)) == 2
    return {
        "accuracy": float(np.average(predicted == y, weights=w)),
        "f1_weighted": float(
            f1_score(y, predicted, average="weighted", sample_weight=w, zero_division=0)
        ),
        "roc_auc": float(roc_auc_score(y, p, sample_weight=w)) if two_classes else float("nan"),
        "log_loss": float(log_loss(y, p, sample_weight=w, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, sample_weight=w)),
        "calibration_error": calibration_error(y, p),
        "precision": float(w[positives & (y == 1)].sum() / w[positives].sum())
        if positives.any()
        else 0.0,
        "fp_rate": float(w[false_positive].sum() / max(w[y == 0].sum(), 1e-12)),
    }


def majority_accuracy(y: np.ndarray) -> float:
    """Accuracy of always predicting the holdout's majority class."""
    return float(max(np.mean(y), 1 - np.mean(y))) if len(y) else float("nan")


def _bootstrap_metric(metric: str, y: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """``metric`` per bootstrap replicate; ``y`` and ``p`` are (replicates, n) matrices."""
    predicted = (p >= threshold).astype(int)
    if metric == "accuracy":
        return (predicted == y).mean(axis=1)
    if metric == "f1_weighted":
        scores = np.zeros(len(y))
        for cls in (0, 1):
            tp = ((predicted == cls) & (y == cls)).sum(axis=1)
            fp = ((predicted == cls) & (y != cls)).sum(axis=1)
            fn = ((predicted != cls) & (y == cls)).sum(axis=1)
            f1 = np.divide(
                2 * tp, 2 * tp + fp + fn, out=np.zeros(len(y)), where=(2 * tp + fp + fn) > 0
            )
            scores += f1 * (y == cls).sum(axis=1)
        return scores / y.shape[1]
    if metric == "roc_auc":  # Mann-Whitney U with average ranks for ties
        ranks = rankdata(p, axis=1)
        n_pos = y.sum(axis=1)
        n_neg = y.shape[1] - n_pos
        u = (ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            return u / (n_pos * n_neg)
    raise ValueError(metric)


def bootstrap_deltas(
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray,
    threshold: float = 0.5,
    samples: int = 500,
    level: float = 0.95,
    seed: int = 0,
    cells_per_chunk: int = 5_000_000,
) -> dict[str, dict[str, float]]:
    """Challenger-minus-champion delta per metric: point estimate and percentile interval.

    Replicates are drawn in chunks of about `cells_per_chunk` resampled rows, so memory stays
    bounded on a large holdout (the arithmetic inside a chunk is vectorised)."""
    y, p_challenger, p_champion = map(np.asarray, (y, p_challenger, p_champion))
    rng = np.random.default_rng(seed)
    n = len(y)
    chunk = max(1, cells_per_chunk // max(n, 1))
    deltas: dict[str, list[np.ndarray]] = {metric: [] for metric in DELTA_METRICS}
    for start in range(0, samples, chunk):
        index = rng.integers(0, n, size=(min(chunk, samples - start), n))
        y_b, ch_b, cp_b = y[index], p_challenger[index], p_champion[index]
        for metric in DELTA_METRICS:
            deltas[metric].append(
                _bootstrap_metric(metric, y_b, ch_b, threshold)
                - _bootstrap_metric(metric, y_b, cp_b, threshold)
            )
    result = {}
    alpha = (1 - level) / 2
    for metric in DELTA_METRICS:
        point = (
            _bootstrap_metric(metric, y[None, :], p_challenger[None, :], threshold)
            - _bootstrap_metric(metric, y[None, :], p_champion[None, :], threshold)
        )[0]
        values = np.concatenate(deltas[metric])
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, [alpha, 1 - alpha]) if len(values) else (float("nan"),) * 2
        result[metric] = {"delta": float(point), "low": float(low), "high": float(high)}
    return result
