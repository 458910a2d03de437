"""Analytics plots for the Dagster UI and MLflow."""

from __future__ import annotations

import io

import matplotlib
import pandas as pd

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def fp_trend_png(fp_trend: pd.DataFrame) -> bytes:
    """Weekly FP rate (share of judged predictions labeled bad) per environment, with its
    Wilson interval: prod vs dev."""
    figure, ax = plt.subplots(figsize=(8, 3.5))
    for environment, rows in fp_trend.groupby("environment"):
        weeks = pd.to_datetime(rows["week"])
        ax.plot(weeks, rows["fp_rate"], marker="o", label=f"{environment}")
        ax.fill_between(weeks, rows["fp_rate_low"], rows["fp_rate_high"], alpha=0.2)
    ax.set(title="Weekly FP rate (95% Wilson interval)", ylabel="FP rate", ylim=(0, 1))
    ax.legend()
    return png_bytes(figure)
