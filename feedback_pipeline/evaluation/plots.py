"""Holdout plots for MLflow and Dagster: ROC and calibration, one curve per model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from feedback_pipeline.analytics.plots import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def holdout_figures(y: np.ndarray, probabilities: dict[str, np.ndarray]) -> dict[str, Figure]:
    """ROC and calibration curves of every model on the same holdout rows."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import RocCurveDisplay

    plt = pyplot()
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
        pyplot().close(figure)
