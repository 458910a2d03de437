"""A/B comparison of two variants or two model versions on one feedback metric.

Rates (accept, FP, win) get statsmodels' two-proportion z-test, an interval for the difference
and Cohen's h; means (return, rating) get scipy's Welch t-test and Cohen's d. Power is for the
smallest effect worth detecting (a setting), never the observed one, so "keep collecting" says
how many more samples per arm that effect needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Literal

import duckdb
import numpy as np

from feedback_pipeline.analytics.feedback_stats import PREDICTION_FEEDBACK, load_prediction_feedback
from feedback_pipeline.settings import ABMetric, AnalyticsSettings, LabelingSettings

# metric -> (per-prediction column of prediction_feedback, kind, higher is better)
METRICS: dict[str, tuple[str, Literal["rate", "mean"], bool]] = {
    "accept_rate": ("accepted", "rate", True),
    "fp_rate": ("1 - label", "rate", False),
    "win_rate": ("won", "rate", True),
    "mean_return": ("return_pct", "mean", True),
    "mean_rating": ("rating", "mean", True),
}
Recommendation = Literal["adopt", "keep control", "keep collecting"]


class TooFewSamples(ValueError):
    """An arm has fewer than two samples of a metric."""


@dataclass(frozen=True)
class ABResult:
    metric: str
    by: str
    control: str
    treatment: str
    test: str
    n_control: int
    n_treatment: int
    control_value: float
    treatment_value: float
    difference: float  # treatment - control
    relative_lift: float  # difference / control value
    ci_low: float
    ci_high: float
    p_value: float
    effect_size: float
    effect_size_name: str  # Cohen's h (rates) or Cohen's d (means)
    power: float  # to detect the smallest effect worth detecting, with these samples
    samples_needed_per_arm: int  # for that power; 0 when there are enough
    recommendation: Recommendation
    reason: str
    p_value_adjusted: float | None = None  # Benjamini-Hochberg, when several metrics are tested

    def as_dict(self) -> dict:
        return asdict(self)


def arm_values(con: duckdb.DuckDBPyConnection, metric: str, by: str, arm: str) -> np.ndarray:
    """One arm's per-prediction values of ``metric`` from ``prediction_feedback`` (NULLs, i.e.
    predictions without that kind of feedback, left out)."""
    column = METRICS[metric][0]
    if by not in ("variant", "model_version"):
        raise ValueError(f"--by must be variant or model_version, not {by!r}")
    rows = con.execute(
        f"SELECT ({column})::DOUBLE FROM {PREDICTION_FEEDBACK} "
        f"WHERE {by} = ? AND ({column}) IS NOT NULL",
        [arm],
    ).fetchnumpy()
    return next(iter(rows.values()))


def _recommend(
    significant: bool, better: bool, power: float, needed: int, settings: AnalyticsSettings
) -> tuple[Recommendation, str]:
    if significant:
        return (
            ("adopt", "the treatment is significantly better")
            if better
            else ("keep control", "the treatment is significantly worse")
        )
    if power >= settings.power:
        return (
            "keep control",
            f"no significant difference, and {power:.0%} power to see the smallest effect worth "
            "detecting: the treatment is not better by that much",
        )
    return (
        "keep collecting",
        f"no significant difference yet; power {power:.0%} < {settings.power:.0%}: about "
        f"{needed:,} more samples per arm",
    )


def compare_arms(
    control: np.ndarray,
    treatment: np.ndarray,
    metric: ABMetric,
    settings: AnalyticsSettings,
    by: str = "variant",
    names: tuple[str, str] = ("control", "treatment"),
) -> ABResult:
    """The A/B statistics of ``treatment`` against ``control`` (per-sample values)."""
    from scipy.stats import ttest_ind
    from statsmodels.stats.power import NormalIndPower, TTestIndPower
    from statsmodels.stats.proportion import (
        confint_proportions_2indep,
        proportion_effectsize,
        proportions_ztest,
    )

    _, kind, higher_is_better = METRICS[metric]
    n_c, n_t = len(control), len(treatment)
    if min(n_c, n_t) < 2:
        raise TooFewSamples(
            f"{metric}: {names[0]} has {n_c} and {names[1]} has {n_t} samples with this kind of "
            f"feedback; an A/B comparison needs at least 2 per arm (check --{by} and the arms)"
        )
    mean_c, mean_t = float(np.mean(control)), float(np.mean(treatment))
    alpha = settings.alpha
    if kind == "rate":
        x_c, x_t = int(np.sum(control)), int(np.sum(treatment))
        _, p_value = proportions_ztest([x_t, x_c], [n_t, n_c])
        ci_low, ci_high = confint_proportions_2indep(
            x_t, n_t, x_c, n_c, compare="diff", method="newcomb", alpha=alpha
        )
        effect = float(proportion_effectsize(mean_t, mean_c))
        target = min(max(mean_c, 1e-6) + settings.min_rate_difference, 1 - 1e-6)
        smallest = abs(float(proportion_effectsize(target, mean_c)))
        power_analysis = NormalIndPower()
        test, effect_name = "two-proportion z-test", "Cohen's h"
    else:
        welch = ttest_ind(treatment, control, equal_var=False)
        p_value = welch.pvalue
        ci_low, ci_high = welch.confidence_interval(1 - alpha)
        pooled_sd = math.sqrt(
            ((n_c - 1) * np.var(control, ddof=1) + (n_t - 1) * np.var(treatment, ddof=1))
            / (n_c + n_t - 2)
        )
        effect = (mean_t - mean_c) / pooled_sd if pooled_sd > 0 else 0.0
        smallest = settings.min_cohens_d
        power_analysis = TTestIndPower()
        test, effect_name = "Welch's t-test", "Cohen's d"
    p_value = float(p_value) if np.isfinite(p_value) else 1.0
    power = float(power_analysis.power(smallest, nobs1=n_t, alpha=alpha, ratio=n_c / n_t))
    per_arm = power_analysis.solve_power(smallest, power=settings.power, alpha=alpha, ratio=1.0)
    needed = max(0, math.ceil(float(per_arm)) - min(n_c, n_t))
    difference = mean_t - mean_c
    better = (difference > 0) == higher_is_better
    recommendation, reason = _recommend(p_value < alpha, better, power, needed, settings)
    return ABResult(
        metric=metric,
        by=by,
        control=names[0],
        treatment=names[1],
        test=test,
        n_control=n_c,
        n_treatment=n_t,
        control_value=mean_c,
        treatment_value=mean_t,
        difference=difference,
        relative_lift=difference / mean_c if mean_c else float("nan"),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=p_value,
        effect_size=float(effect),
        effect_size_name=effect_name,
        power=power,
        samples_needed_per_arm=needed,
        recommendation=recommendation,
        reason=reason,
    )


@dataclass(frozen=True)
class ABComparison:
    """The metrics compared, and those skipped for too few samples (metric -> why)."""

    results: list[ABResult]
    skipped: dict[str, str]

    def as_dict(self) -> dict:
        return {"results": [r.as_dict() for r in self.results], "skipped": self.skipped}

    def lines(self) -> list[str]:
        """For people: each skipped metric, then each result with its recommendation."""
        skipped = [f"{metric}: skipped ({why})" for metric, why in self.skipped.items()]
        return skipped + [
            f"{r.metric} ({r.by} {r.treatment} vs {r.control}, {r.test}): "
            f"{r.control_value:.4g} (n={r.n_control:,}) -> {r.treatment_value:.4g} "
            f"(n={r.n_treatment:,}); difference {r.difference:+.4g} "
            f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}], lift {r.relative_lift:+.1%}, "
            f"p={r.p_value:.3g}"
            + (f" (BH-adjusted {r.p_value_adjusted:.3g})" if r.p_value_adjusted is not None else "")
            + f", {r.effect_size_name} {r.effect_size:+.3f}, power {r.power:.0%}\n"
            f"  -> {r.recommendation}: {r.reason}"
            for r in self.results
        ]


def ab_compare(
    con: duckdb.DuckDBPyConnection,
    labeling: LabelingSettings,
    settings: AnalyticsSettings,
    as_of: datetime,
    control: str,
    treatment: str,
    metrics: list[ABMetric],
    by: str = "variant",
    since: datetime | None = None,
) -> ABComparison:
    """Compare two arms on each metric that has samples in both (a metric without, say no
    ratings yet, is skipped with the reason; none comparable is an error). With several metrics
    the p-values are also adjusted for the many comparisons (Benjamini-Hochberg) and the
    recommendation uses the adjusted one."""
    since = since or as_of - timedelta(days=settings.since_days)
    load_prediction_feedback(con, labeling, as_of, since)
    results, skipped = [], {}
    for metric in metrics:
        try:
            results.append(
                compare_arms(
                    arm_values(con, metric, by, control),
                    arm_values(con, metric, by, treatment),
                    metric,
                    settings,
                    by,
                    (control, treatment),
                )
            )
        except TooFewSamples as error:
            skipped[metric] = str(error)
    if not results:
        raise TooFewSamples("; ".join(skipped.values()))
    if len(results) < 2:
        return ABComparison(results, skipped)
    from scipy.stats import false_discovery_control

    adjusted = false_discovery_control([r.p_value for r in results], method="bh")
    out = []
    for result, p_adjusted in zip(results, adjusted, strict=True):
        better = (result.difference > 0) == METRICS[result.metric][2]
        recommendation, reason = _recommend(
            p_adjusted < settings.alpha,
            better,
            result.power,
            result.samples_needed_per_arm,
            settings,
        )
        out.append(
            ABResult(
                **{
                    **result.as_dict(),
                    "p_value_adjusted": float(p_adjusted),
                    "recommendation": recommendation,
                    "reason": reason,
                }
            )
        )
    return ABComparison(out, skipped)
