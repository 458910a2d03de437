"""Holdout plots for MLflow and Dagster: ROC and calibration, one curve per model."""

from __future__ import annotations

import matplotlib
import numpy as np
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import RocCurveDisplay

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def holdout_figures(y: np.ndarray, probabilities: dict[str, np.ndarray]) -> dict[str, Figure]:
    """ROC and calibration curves of every model on the same holdout rows."""
    roc, roc_ax = plt.subplots(figsize=(5, 5))
    calibration, calibration_ax = plt.subplots(figsize=(5, 5))
    for label, p in probabilities.items():
        RocCurveDisplay.from_predictions(y, p, name=label, ax=roc_ax)
        CalibrationDisplay.from_predictions(y, p, n_bins=10, name=label, ax=calibration_ax)
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(title="ROC on holdout")
    calibration_ax.set(title="Calibration on holdout")
    return {"roc": roc, "calibration": calibration}


def close(figures: dict[str, Figure]) -> None:
    for figure in figures.values():
        plt.close(figure)
