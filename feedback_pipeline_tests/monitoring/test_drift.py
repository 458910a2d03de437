"""Drift: flagged on a shifted feature, not on a stable stream (over several seeds); an accuracy
drop alone also asks for a retrain; the serving-health checks fail outside the SLA."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import dagster as dg
import numpy as np
import pytest

from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.monitoring.drift import (
    Reference,
    accuracy_dropped,
    judge_windows,
    psi,
    retrain_due,
)
from feedback_pipeline.settings import LabelingSettings, MonitoringSettings
from feedback_pipeline.simulator.feedback_stream import FEATURES, SimulationConfig
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import run_job, simulate_and_ingest

START = date(2026, 3, 2)
SETTINGS = MonitoringSettings()


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    assert psi(reference, rng.normal(size=5_000)) < 0.02
    assert psi(reference, rng.normal(loc=1.0, size=5_000)) > 0.5
    # A 0/1 column gets one bin per value: 50% -> 80% positives.
    decisions = (rng.random(20_000) < 0.5).astype(float)
    shifted = (rng.random(5_000) < 0.8).astype(float)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(decisions, shifted) == pytest.approx(expected, abs=0.02)
    # Empty bins count as a small share, so PSI stays finite.
    assert np.isfinite(psi(reference, np.full(100, 10.0)))


def stream(tmp_path, seed: int, **drift) -> warehouse.duckdb.DuckDBPyConnection:
    con = simulate_and_ingest(
        tmp_path,
        SimulationConfig(start=START, days=21, predictions_per_day=200, seed=seed, **drift),
        ("predictions", "feedback"),
    )
    build_labeled_outcomes(con, LabelingSettings(), datetime(2026, 3, 23))
    return con


def reference_of(day: int) -> Reference:
    end = datetime.combine(START, datetime.min.time()) + timedelta(days=day)
    return Reference("1", list(FEATURES), end - timedelta(days=14), end)


NOW = datetime(2026, 3, 23)  # the sensor's windows: days 18, 19 and 20


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_stable_stream_raises_no_alarm(tmp_path, seed):
    con = stream(tmp_path, seed)
    verdicts, reference_accuracy = judge_windows(con, reference_of(15), NOW, SETTINGS)
    con.close()
    assert len(verdicts) == 3 and all(v.rows >= 150 for v in verdicts)
    assert [v.drifted_columns for v in verdicts] == [[], [], []], [v.line() for v in verdicts]
    assert all(v.max_psi < SETTINGS.psi_threshold for v in verdicts)
    assert 0.5 < reference_accuracy < 1.0
    assert not retrain_due(verdicts, reference_of(15), SETTINGS).due


@pytest.mark.parametrize("seed", [1, 2])
def test_a_shifted_feature_is_flagged_in_the_windows_after_the_shift(tmp_path, seed):
    con = stream(tmp_path, seed, drift_start_day=19, drift_feature="volatility", drift_shift=1.0)
    reference = reference_of(15)
    verdicts, _ = judge_windows(con, reference, NOW, SETTINGS)
    con.close()
    newest, middle, oldest = verdicts
    assert "volatility" in newest.drifted_columns and "volatility" in middle.drifted_columns
    assert oldest.drifted_columns == []  # day 18: before the shift
    assert not {"momentum", "volume_z"} & set(newest.drifted_columns)
    due = retrain_due(verdicts, reference, SETTINGS)
    assert due.due and due.run_key == f"monitoring:1:{NOW.isoformat()}"
    assert "2 of the last 3 windows drifted or degraded" in due.reason


def test_windows_the_champion_trained_on_are_not_judged(tmp_path):
    con = stream(tmp_path, 1, drift_start_day=19, drift_feature="volatility", drift_shift=1.0)
    verdicts, _ = judge_windows(con, reference_of(21), NOW, SETTINGS)  # as_of after the windows
    con.close()
    assert verdicts == []
    assert (
        "no complete window after the champion's as_of yet"
        in retrain_due(verdicts, reference_of(21), SETTINGS).reason
    )


@pytest.mark.parametrize(
    ("labeled", "accuracy", "dropped"),
    [
        (100, 0.60, True),  # 20 points down on 100 labels: real
        (100, 0.76, False),  # within the 5-point allowance
        (100, 0.73, False),  # 7 points down, but 100 labels swing that much (p ~ 0.05)
        (400, 0.73, True),  # the same drop on 400 labels is significant
        (30, 0.40, False),  # too few labels to judge
    ],
)
def test_an_accuracy_drop_must_be_large_and_significant(labeled, accuracy, dropped):
    assert accuracy_dropped(labeled, accuracy, 2000, 0.80, SETTINGS) is dropped


def test_an_accuracy_drop_alone_asks_for_a_retrain(tmp_path):
    """Feedback that turns against the served decisions from day 18 (the features and the
    served confidence unchanged): no window drifts, each degrades, and that alone is due."""
    con = stream(tmp_path, 1, label_noise_day=18)
    reference = reference_of(15)
    verdicts, reference_accuracy = judge_windows(con, reference, NOW, SETTINGS)
    con.close()
    assert len(verdicts) == 3
    assert [v.drifted_columns for v in verdicts] == [[], [], []], [v.line() for v in verdicts]
    assert all(v.max_psi < SETTINGS.psi_threshold for v in verdicts)
    assert all(v.degraded and v.alarming for v in verdicts), [v.line() for v in verdicts]
    assert all(v.labeled >= SETTINGS.min_labeled_rows for v in verdicts)
    assert all(v.accuracy < reference_accuracy - 0.2 for v in verdicts)
    due = retrain_due(verdicts, reference, SETTINGS)
    assert due.due and due.run_key == f"monitoring:1:{NOW.isoformat()}"
    assert due.reason.startswith("3 of the last 3 windows drifted or degraded")
    assert due.reason.count("(drifted: none)") == 3 and due.reason.count("DEGRADED") == 3


def request_log(folder, latencies: list[float], fallbacks: int) -> None:
    """Requests the server logged on 2026-04-03, 10 rows each, ``fallbacks`` of them in all."""
    folder.mkdir(parents=True)
    lines = [
        {
            "at": f"2026-04-03T10:00:{i:02d}",
            "latency_ms": ms,
            "rows": 10,
            "fallbacks": min(10, max(0, fallbacks - 10 * i)),
            "status": 200,
            "model_version": "2",
            "policy_version": 0,
        }
        for i, ms in enumerate(latencies)
    ]
    (folder / "requests-20260403.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.mark.parametrize(
    ("latencies", "fallbacks", "latency_ok", "fallback_ok"),
    [
        ([70.0, 80.0], 2, True, True),  # mean 75 ms, 10% of rows: both at the SLA, within it
        ([70.0, 81.0], 2, False, True),  # mean 75.5 ms
        ([70.0, 80.0], 3, True, False),  # 15% fell back
        ([300.0, 500.0], 20, False, False),
    ],
)
def test_the_serving_health_checks_fail_outside_the_sla(
    tmp_path, instance, latencies, fallbacks, latency_ok, fallback_ok
):
    request_log(tmp_path / "serving", latencies, fallbacks)
    result = run_job(
        tmp_path, instance, "monitoring_job", ["serving_health"], as_of="2026-04-04T00:00:00Z"
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    latency, fallback = checks["mean_latency_within_sla"], checks["fallback_rate_within_sla"]
    assert (latency.passed, fallback.passed) == (latency_ok, fallback_ok)
    assert latency.severity == fallback.severity == dg.AssetCheckSeverity.WARN
    mean = sum(latencies) / len(latencies)
    assert latency.description.startswith(f"mean {mean:.1f} ms, p99 ")
    assert latency.description.endswith("(SLA: mean <= 75 ms)")
    rate = fallbacks / (10 * len(latencies))
    assert fallback.description == (f"fallback rate {rate:.1%} (SLA: <= 10%); error rate 0.0%")
