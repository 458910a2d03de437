"""Analytics plots for the Dagster UI and MLflow, and the one way this package reaches pyplot.

Matplotlib and scikit-learn's displays are imported when a plot is drawn, not when the module
is: the code location (every sensor's code server, every run worker) loads without them."""

from __future__ import annotations

import io
from types import ModuleType

import numpy as np
import pandas as pd


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot().close(figure)
    return buffer.getvalue()


def fp_trend_png(fp_trend: pd.DataFrame) -> bytes:
    """Weekly FP rate (share of judged predictions labeled bad) per environment, with its
    Wilson interval: prod vs dev."""
    figure, ax = pyplot().subplots(figsize=(8, 3.5))
    for environment, rows in fp_trend.groupby("environment"):
        weeks = pd.to_datetime(rows["week"])
        ax.plot(weeks, rows["fp_rate"], marker="o", label=f"{environment}")
        ax.fill_between(weeks, rows["fp_rate_low"], rows["fp_rate_high"], alpha=0.2)
    ax.set(title="Weekly FP rate (95% Wilson interval)", ylabel="FP rate", ylim=(0, 1))
    ax.legend()
    return png_bytes(figure)


def reliability_png(y: np.ndarray, scores: dict[str, np.ndarray], n_bins: int = 10) -> bytes:
    """Reliability diagram (scikit-learn's CalibrationDisplay) of each named score on the same
    labeled rows: the held-out rows of a serving-policy proposal, current vs proposed."""
    from sklearn.calibration import CalibrationDisplay

    figure, ax = pyplot().subplots(figsize=(5, 4.5))
    for name, score in scores.items():
        known = np.isfinite(score)
        CalibrationDisplay.from_predictions(
            y[known], score[known], n_bins=n_bins, strategy="quantile", name=name, ax=ax
        )
    ax.set(title=f"Held-out rows ({len(y)}): reliability")
    return png_bytes(figure)
