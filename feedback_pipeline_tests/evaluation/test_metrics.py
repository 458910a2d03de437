"""Holdout metrics and bootstrap intervals agree with scikit-learn and with common sense."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from feedback_pipeline.evaluation.metrics import (
    _bootstrap_metric,
    calibration_error,
    classification_metrics,
    delong_auc_delta,
    majority_accuracy,
    mcnemar_exact,
    paired_deltas,
)

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 400)
GOOD = np.clip(Y * 0.6 + RNG.normal(0.2, 0.2, 400), 0, 1)
NOISE = RNG.random(400)


def test_delong_matches_scikit_learn_and_the_bootstrap():
    """The AUC delta is scikit-learn's; DeLong's interval is as wide as a paired bootstrap's of
    the same delta (both estimate its sampling spread), and symmetric around it."""
    tied = np.round(NOISE, 1)  # ties count one half in both
    result = delong_auc_delta(Y, GOOD, tied)
    assert np.isclose(result["delta"], roc_auc_score(Y, GOOD) - roc_auc_score(Y, tied))
    index = np.random.default_rng(1).integers(0, len(Y), size=(2000, len(Y)))
    resampled = [roc_auc_score(Y[i], GOOD[i]) - roc_auc_score(Y[i], tied[i]) for i in index]
    low, high = np.quantile(resampled, [0.025, 0.975])
    assert np.isclose(result["high"] - result["low"], high - low, rtol=0.15)
    assert np.isclose(result["delta"] - result["low"], result["high"] - result["delta"])
    assert delong_auc_delta(Y, GOOD, GOOD) == {"delta": 0.0, "low": 0.0, "high": 0.0}


def test_a_replicate_as_draw_counts_scores_like_the_resampled_rows():
    """Each replicate's metric from its draw counts equals scikit-learn's on the rows drawn."""
    tied = np.round(GOOD, 1)  # many equal scores
    index = np.random.default_rng(5).integers(0, len(Y), size=(4, len(Y)))
    counts = np.stack([np.bincount(row, minlength=len(Y)) for row in index]).astype(float)
    for p in (GOOD, tied):
        expected = {
            "accuracy": [accuracy_score(Y[i], p[i] >= 0.5) for i in index],
            "f1_weighted": [f1_score(Y[i], p[i] >= 0.5, average="weighted") for i in index],
        }
        for metric, values in expected.items():
            assert np.allclose(_bootstrap_metric(metric, counts, Y, p, 0.5), values), metric


def test_identical_models_have_zero_deltas():
    result = paired_deltas(Y, GOOD, GOOD, samples=200)
    for metric in ("accuracy", "f1_weighted", "roc_auc"):
        assert result[metric] == {"delta": 0.0, "low": 0.0, "high": 0.0}


def test_a_much_better_model_has_a_positive_lower_bound():
    result = paired_deltas(Y, GOOD, NOISE, samples=300)
    assert result["accuracy"]["low"] > 0
    assert result["roc_auc"]["low"] > 0
    assert result["accuracy"]["low"] <= result["accuracy"]["delta"] <= result["accuracy"]["high"]


def test_mcnemar_counts_the_discordant_rows_and_matches_a_binomial_test():
    good_right, noise_right = (GOOD >= 0.5) == Y, (NOISE >= 0.5) == Y
    only_good, only_noise, p_value = mcnemar_exact(good_right, noise_right)
    assert only_good - only_noise == np.sum(good_right) - np.sum(noise_right)
    assert only_good > only_noise
    assert p_value == binomtest(only_noise, only_good + only_noise, 0.5).pvalue
    assert p_value < 0.001
    # the same model twice: no discordant rows, no evidence either way
    assert mcnemar_exact(good_right, good_right) == (0, 0, 1.0)
    # a coin flip's worth of disagreement is not a difference
    assert mcnemar_exact([True, False, True, False], [False, True, False, True])[2] == 1.0


def test_metrics_and_baselines():
    m = classification_metrics(Y, GOOD)
    assert set(m) == {
        "accuracy",
        "f1_weighted",
        "roc_auc",
        "log_loss",
        "brier",
        "calibration_error",
        "precision",
        "fp_rate",
    }
    assert m["accuracy"] > 0.8 and m["roc_auc"] > 0.9
    assert majority_accuracy(np.array([1, 1, 1, 0])) == 0.75
    assert calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    assert np.isclose(calibration_error(np.array([0, 0]), np.array([0.9, 0.9])), 0.9)


def test_chunked_bootstrap_matches_one_chunk():
    whole = paired_deltas(Y, GOOD, NOISE, samples=120, seed=3)
    chunked = paired_deltas(Y, GOOD, NOISE, samples=120, seed=3, cells_per_chunk=400 * 7)
    for metric in ("accuracy", "f1_weighted", "roc_auc"):
        assert whole[metric]["delta"] == chunked[metric]["delta"]
        assert np.isclose(whole[metric]["low"], chunked[metric]["low"], atol=0.03)
