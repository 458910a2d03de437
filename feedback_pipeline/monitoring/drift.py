"""Drift and live performance of what was served, against the champion's reference period.

The reference is the last ``monitoring.reference_days`` of the champion's training window (up to
its ``as_of``): what the model learned from most recently. Recent predictions are compared with
it per feature and for the served confidence and decision: PSI on the reference's quantile bins
(a small epsilon for empty bins) and the two-sample KS statistic (scipy). Values come out of
DuckDB in one query per look, as numpy columns; binning and counting are vectorised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.settings import MonitoringSettings
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES, RAW_PREDICTIONS

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry

EPSILON = 1e-4  # the share an empty bin counts as, so PSI stays finite
# KS on at most this many values per side (a seeded sample): the statistic's sampling error is
# then about 1/sqrt(n) = 0.002, far below any threshold worth alarming on, and a million-row
# window costs a sort of 100k values instead of 1M per column. PSI always uses every row.
KS_SAMPLE = 100_000
SERVED_COLUMNS = ("confidence", "decision")  # the served confidence and its decision at 0.5


@dataclass(frozen=True)
class Reference:
    """The champion and the period its drift is measured against."""

    champion_version: str
    features: list[str]
    start: datetime
    end: datetime  # the champion's as_of

    @property
    def period(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M}"


class NoChampion(LookupError):
    """Nothing to monitor yet."""


def champion_reference(registry: Registry, settings: MonitoringSettings) -> Reference:
    version = registry.alias_version(CHAMPION)
    if version is None:
        raise NoChampion("no champion yet: run retrain_job first; drift is measured against it")
    tags = registry.version_tags(version)
    end = datetime.fromisoformat(tags["as_of"]).replace(tzinfo=None)
    return Reference(
        version, json.loads(tags["features"]), end - timedelta(days=settings.reference_days), end
    )


def load_served(
    con: duckdb.DuckDBPyConnection, features: list[str], start: datetime, end: datetime
) -> pd.DataFrame:
    """Predictions in (start, end]: predicted_at, the features, confidence and decision."""
    structure = json.dumps({name: "DOUBLE" for name in features})
    return con.execute(
        f"""SELECT predicted_at, unnest(json_transform(features, '{structure}')),
                   confidence, (confidence >= 0.5)::DOUBLE AS decision
            FROM {RAW_PREDICTIONS} WHERE predicted_at > $start AND predicted_at <= $end""",
        {"start": start, "end": end},
    ).df()


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` on the reference's
    quantile bins (tied quantiles merge, so a 0/1 decision gets a bin per value)."""
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    shares = [
        np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        / len(values)
        for values in (reference, current)
    ]
    r, c = (np.maximum(share, EPSILON) for share in shares)
    return float(np.sum((c - r) * np.log(c / r)))


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= KS_SAMPLE:
        return values
    return values[rng.integers(0, len(values), KS_SAMPLE)]


def drift_table(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], settings: MonitoringSettings
) -> pd.DataFrame:
    """Per column: rows, means, missing shares, PSI, KS statistic and p-value (on at most
    KS_SAMPLE values a side), drifted."""
    from scipy.stats import ks_2samp

    rows = []
    rng = np.random.default_rng(0)
    for column in columns:
        r = reference[column].to_numpy(dtype=float)
        c = current[column].to_numpy(dtype=float)
        r_known, c_known = r[np.isfinite(r)], c[np.isfinite(c)]
        enough = len(r_known) > 0 and len(c_known) > 0
        ks = ks_2samp(_sample(r_known, rng), _sample(c_known, rng)) if enough else None
        value = psi(r, c, settings.bins)
        rows.append(
            {
                "column": column,
                "kind": "served" if column in SERVED_COLUMNS else "feature",
                "reference_rows": len(r),
                "current_rows": len(c),
                "reference_mean": float(r_known.mean()) if len(r_known) else np.nan,
                "current_mean": float(c_known.mean()) if len(c_known) else np.nan,
                "missing_reference": float(1 - len(r_known) / max(len(r), 1)),
                "missing_current": float(1 - len(c_known) / max(len(c), 1)),
                "psi": value,
                "ks": float(ks.statistic) if ks else np.nan,
                "ks_pvalue": float(ks.pvalue) if ks else np.nan,
                "drifted": bool(enough and value > settings.psi_threshold),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return self.end.isoformat()


def sensor_windows(
    reference: Reference, now: datetime, settings: MonitoringSettings
) -> list[Window]:
    """The last ``windows`` complete windows before ``now`` (aligned to UTC midnight, so a
    window keeps its key from tick to tick), newest first, that start after the champion's
    as_of: a window the champion trained on is no evidence against it."""
    step = timedelta(days=settings.window_days)
    midnight = datetime(now.year, now.month, now.day)
    windows = [
        Window(midnight - (i + 1) * step, midnight - i * step) for i in range(settings.windows)
    ]
    return [w for w in windows if w.start >= reference.end]


@dataclass(frozen=True)
class WindowVerdict:
    window: Window
    rows: int
    max_psi: float
    drifted_columns: list[str]
    labeled: int
    accuracy: float
    degraded: bool  # live accuracy dropped by more than accuracy_drop, significantly

    @property
    def judged(self) -> bool:
        return self.rows > 0

    @property
    def alarming(self) -> bool:
        return bool(self.drifted_columns) or self.degraded

    def line(self) -> str:
        drift = ", ".join(self.drifted_columns) or "none"
        accuracy = f"{self.accuracy:.3f} on {self.labeled} labels" if self.labeled else "no labels"
        return (
            f"{self.window.start:%m-%d}..{self.window.end:%m-%d}: {self.rows} rows, max PSI "
            f"{self.max_psi:.3f} (drifted: {drift}), accuracy {accuracy}"
            + (" DEGRADED" if self.degraded else "")
        )


def accuracy_dropped(
    labeled: int,
    accuracy: float,
    reference_labeled: int,
    reference_accuracy: float,
    settings: MonitoringSettings,
) -> bool:
    """Live accuracy is lower than the reference period's by more than ``accuracy_drop``, and
    significantly so (one-sided two-proportion z-test at ``alpha``): a hundred labels swing by a
    few points on their own."""
    if labeled < settings.min_labeled_rows or not reference_labeled:
        return False
    if accuracy >= reference_accuracy - settings.accuracy_drop:
        return False
    from statsmodels.stats.proportion import proportions_ztest

    counts = [round(accuracy * labeled), round(reference_accuracy * reference_labeled)]
    _, p_value = proportions_ztest(counts, [labeled, reference_labeled], alternative="smaller")
    return bool(p_value < settings.alpha)


def accuracy_by_period(
    con: duckdb.DuckDBPyConnection, periods: list[tuple[datetime, datetime]], as_of: datetime
) -> list[tuple[int, float]]:
    """Matured labels (labeled by ``as_of``) of predictions in each period: (rows, accuracy of
    the served decision, confidence >= 0.5)."""
    if not periods:
        return []
    frame = pd.DataFrame(
        {
            "period": range(len(periods)),
            "start": [p[0] for p in periods],
            "end": [p[1] for p in periods],
        }
    )
    con.register("monitoring_periods", frame)
    try:
        found = con.execute(
            f"""SELECT p.period, count(l.label) AS labeled,
                       avg(((l.confidence >= 0.5)::INTEGER = l.label)::DOUBLE) AS accuracy
                FROM monitoring_periods p LEFT JOIN {LABELED_OUTCOMES} l
                  ON l.predicted_at > p.start AND l.predicted_at <= p."end"
                 AND l.labeled_at <= $as_of
                GROUP BY p.period ORDER BY p.period""",
            {"as_of": as_of},
        ).fetchall()
    finally:
        con.unregister("monitoring_periods")
    return [(int(n), float(a) if a is not None else float("nan")) for _, n, a in found]


def judge_windows(
    con: duckdb.DuckDBPyConnection,
    reference: Reference,
    now: datetime,
    settings: MonitoringSettings,
) -> tuple[list[WindowVerdict], float]:
    """Each sensor window's drift and live accuracy against the reference period; returns the
    verdicts (newest first) and the reference period's accuracy."""
    windows = sensor_windows(reference, now, settings)
    if not windows:
        return [], float("nan")
    served = load_served(con, reference.features, reference.start, windows[0].end)
    at = served["predicted_at"]
    base = served[at <= reference.end]
    columns = [*reference.features, *SERVED_COLUMNS]
    periods = [(reference.start, reference.end), *[(w.start, w.end) for w in windows]]
    (reference_labeled, reference_accuracy), *accuracies = accuracy_by_period(con, periods, now)
    verdicts = []
    for window, (labeled, accuracy) in zip(windows, accuracies, strict=True):
        rows = served[(at > window.start) & (at <= window.end)]
        if len(rows) < settings.min_window_rows:
            drifted, max_psi = [], float("nan")
        else:
            table = drift_table(base, rows, columns, settings)
            drifted = table.loc[table["drifted"], "column"].tolist()
            max_psi = float(table["psi"].max())
        degraded = accuracy_dropped(
            labeled, accuracy, reference_labeled, reference_accuracy, settings
        )
        verdicts.append(
            WindowVerdict(window, len(rows), max_psi, drifted, labeled, accuracy, degraded)
        )
    return verdicts, reference_accuracy


@dataclass(frozen=True)
class RetrainDue:
    due: bool
    run_key: str | None
    reason: str


def retrain_due(
    verdicts: list[WindowVerdict], reference: Reference, settings: MonitoringSettings
) -> RetrainDue:
    """k of the last n windows drifted or degraded: a retrain, keyed by the champion and the
    newest window, so one episode asks once per champion and window."""
    alarming = [v for v in verdicts if v.alarming]
    lines = (
        "; ".join(v.line() for v in verdicts) or "no complete window after the champion's as_of yet"
    )
    summary = (
        f"{len(alarming)} of the last {len(verdicts)} windows drifted or degraded (needs "
        f"{settings.windows_required} of {settings.windows}; PSI > {settings.psi_threshold}, "
        f"accuracy drop > {settings.accuracy_drop}) against champion "
        f"v{reference.champion_version}'s reference {reference.period}: {lines}"
    )
    if len(alarming) >= settings.windows_required:
        return RetrainDue(
            True, f"monitoring:{reference.champion_version}:{verdicts[0].window.key}", summary
        )
    return RetrainDue(False, None, summary)
