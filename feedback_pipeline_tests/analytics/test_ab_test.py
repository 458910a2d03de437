"""A/B comparisons: the statistics are scipy's and statsmodels', and the recommendation follows
a true effect in a simulated stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2_contingency, false_discovery_control
from scipy.stats import ttest_ind as scipy_welch
from statsmodels.stats.proportion import confint_proportions_2indep
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from feedback_pipeline.analytics.ab_test import compare_arms
from feedback_pipeline.cli import main
from feedback_pipeline.settings import AnalyticsSettings
from feedback_pipeline_tests.analytics.streams import simulated_stream


def test_a_rate_comparison_is_the_two_proportion_z_test_and_newcombe_interval():
    rng = np.random.default_rng(4)
    control, treatment = rng.random(900) < 0.40, rng.random(700) < 0.46
    result = compare_arms(control, treatment, "accept_rate", AnalyticsSettings())

    x_c, x_t = int(control.sum()), int(treatment.sum())
    # The pooled z-test is the uncorrected chi-square test of the 2x2 table.
    table = [[x_t, 700 - x_t], [x_c, 900 - x_c]]
    assert result.p_value == pytest.approx(chi2_contingency(table, correction=False).pvalue)
    low, high = confint_proportions_2indep(x_t, 700, x_c, 900, compare="diff", method="newcomb")
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.difference == pytest.approx(x_t / 700 - x_c / 900)
    assert result.relative_lift == pytest.approx((x_t / 700) / (x_c / 900) - 1)
    h = 2 * np.arcsin(np.sqrt(x_t / 700)) - 2 * np.arcsin(np.sqrt(x_c / 900))
    assert result.effect_size == pytest.approx(h) and result.effect_size_name == "Cohen's h"
    assert (result.n_control, result.n_treatment) == (900, 700)


def test_a_mean_comparison_is_welchs_t_test_with_cohens_d():
    rng = np.random.default_rng(5)
    control, treatment = rng.normal(0.0, 1.0, 300), rng.normal(0.3, 2.0, 200)
    result = compare_arms(control, treatment, "mean_return", AnalyticsSettings())

    welch = scipy_welch(treatment, control, equal_var=False)
    assert result.p_value == pytest.approx(welch.pvalue)
    # statsmodels' own Welch interval for the difference agrees with scipy's.
    compared = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    assert (result.ci_low, result.ci_high) == pytest.approx(
        compared.tconfint_diff(alpha=0.05, usevar="unequal")
    )
    pooled = np.sqrt((299 * control.var(ddof=1) + 199 * treatment.var(ddof=1)) / 498)
    assert result.effect_size == pytest.approx((treatment.mean() - control.mean()) / pooled)
    assert result.test == "Welch's t-test" and result.effect_size_name == "Cohen's d"


def test_too_few_samples_is_an_error_that_names_the_arms():
    with pytest.raises(ValueError, match="control has 1 and treatment has 5"):
        compare_arms(np.ones(1), np.ones(5), "win_rate", AnalyticsSettings())


def test_a_metric_without_samples_is_skipped_with_its_reason_and_alone_is_an_error(
    tmp_path, capsys
):
    as_of = simulated_stream(tmp_path)  # no ratings in this stream
    args = ["--data-dir", str(tmp_path), "ab", "--control", "A", "--treatment", "B",
            "--as-of", as_of.isoformat(), "--metric", "mean_rating"]  # fmt: skip
    assert main([*args, "--json", "--metric", "accept_rate"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    assert [r["metric"] for r in comparison["results"]] == ["accept_rate"]
    assert "A has 0 and B has 0 samples" in comparison["skipped"]["mean_rating"]
    assert main(args) == 2
    assert "mean_rating: A has 0 and B has 0 samples" in capsys.readouterr().err


@pytest.mark.parametrize(("effect", "adopt"), [(1.0, True), (0.0, False)])
def test_the_recommendation_follows_a_true_effect(tmp_path, capsys, effect, adopt):
    as_of = simulated_stream(tmp_path, variant_effect=effect)
    code = main(
        ["--data-dir", str(tmp_path), "ab", "--control", "A", "--treatment", "B",
         "--metric", "accept_rate", "--metric", "fp_rate", "--as-of", as_of.isoformat(),
         "--json"]
    )  # fmt: skip
    assert code == 0
    comparison = json.loads(capsys.readouterr().out)
    assert comparison["skipped"] == {}
    results = {r["metric"]: r for r in comparison["results"]}
    assert set(results) == {"accept_rate", "fp_rate"}
    # Benjamini-Hochberg across the metrics, as scipy computes it on the same p-values
    raw = [results[m]["p_value"] for m in ("accept_rate", "fp_rate")]
    expected = false_discovery_control(raw, method="bh")
    adjusted = [results[m]["p_value_adjusted"] for m in ("accept_rate", "fp_rate")]
    np.testing.assert_allclose(adjusted, expected, rtol=1e-12)
    for result in results.values():
        assert result["n_control"] > 500 and result["n_treatment"] > 500
        assert (result["recommendation"] == "adopt") is adopt
    if adopt:
        assert results["accept_rate"]["difference"] > 0 > results["fp_rate"]["difference"]
        assert results["accept_rate"]["ci_low"] > 0
    else:
        assert results["accept_rate"]["ci_low"] < 0 < results["accept_rate"]["ci_high"]
