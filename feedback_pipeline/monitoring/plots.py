"""Monitoring plots for the Dagster UI."""

from __future__ import annotations

import pandas as pd

from feedback_pipeline.analytics.plots import png_bytes, pyplot


def psi_png(drift: pd.DataFrame, threshold: float) -> bytes:
    """PSI per column against the reference period, the drift threshold as a line."""
    figure, ax = pyplot().subplots(figsize=(7, 3.5))
    colors = ["tab:red" if d else "tab:blue" for d in drift["drifted"]]
    ax.bar(drift["column"], drift["psi"].fillna(0.0), color=colors)
    ax.axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax.set(title="PSI against the champion's reference period", ylabel="PSI")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return png_bytes(figure)


def live_accuracy_png(performance: pd.DataFrame) -> bytes:
    """Weekly accuracy of the served decisions per serving model version."""
    figure, ax = pyplot().subplots(figsize=(7, 3.5))
    for version, rows in performance.groupby("model_version"):
        ax.plot(pd.to_datetime(rows["week"]), rows["accuracy"], marker="o", label=str(version))
    ax.set(title="Live accuracy on matured labels", ylabel="accuracy", ylim=(0, 1))
    ax.legend(title="model_version")
    return png_bytes(figure)


def latency_png(daily: pd.DataFrame, sla_ms: float) -> bytes:
    """Daily p50 / p99 / mean latency with the SLA on the mean."""
    figure, ax = pyplot().subplots(figsize=(7, 3.5))
    days = pd.to_datetime(daily["day"])
    for column in ("p50_latency_ms", "p99_latency_ms", "mean_latency_ms"):
        ax.plot(days, daily[column], marker="o", label=column.removesuffix("_latency_ms"))
    ax.axhline(sla_ms, color="black", linestyle="--", label=f"SLA mean {sla_ms:g} ms")
    ax.set(title="Serving latency", ylabel="ms")
    ax.legend()
    return png_bytes(figure)
