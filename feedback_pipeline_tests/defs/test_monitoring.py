"""Monitoring end to end in a real Dagster instance: the monitoring assets and their WARN
checks, and monitoring_sensor asking for one retrain per drift episode."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.resources import local_resources
from feedback_pipeline.defs.run_context import RunContextResource
from feedback_pipeline.defs.sensors import monitoring_request
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.simulator.feedback_stream import SimulationConfig
from feedback_pipeline_tests.conftest import run_job, simulate_and_ingest

START = date(2026, 3, 2)
TRAINED = datetime(2026, 3, 30)  # day 28: the champion's as_of
NOW = datetime(2026, 4, 4)  # windows: days 30, 31 and 32 (03-31 .. 04-03)


def ingested(folder: Path, **drift) -> Path:
    simulate_and_ingest(
        folder, SimulationConfig(start=START, days=34, predictions_per_day=150, seed=5, **drift)
    ).close()
    return folder


@pytest.fixture(scope="module")
def drifting_source(tmp_path_factory) -> Path:
    """A volatility shift of 1.5 SD from day 29 on."""
    return ingested(
        tmp_path_factory.mktemp("drifting"),
        drift_start_day=29,
        drift_feature="volatility",
        drift_shift=1.5,
    )


@pytest.fixture(scope="module")
def stable_source(tmp_path_factory) -> Path:
    return ingested(tmp_path_factory.mktemp("stable"))


def trained(source: Path, tmp_path: Path, instance: dg.DagsterInstance) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    assert run_job(data_dir, instance, as_of=TRAINED.isoformat()).success
    return data_dir


@pytest.fixture(scope="module")
def drift_champion(drifting_source: Path, tmp_path_factory) -> Path:
    """The drifting stream with a champion trained as of ``TRAINED``, once per module; the
    tests that change it work on a copy (``copied``)."""
    folder = tmp_path_factory.mktemp("drift_champion")
    (folder / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(folder / "home")) as instance:
        return trained(drifting_source, folder, instance)


def copied(data_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(data_dir, target)
    return target


def sense(data_dir: Path, instance: dg.DagsterInstance, now: datetime):
    resources = {
        **local_resources(data_dir),
        "run_context": RunContextResource(as_of=now.isoformat()),
    }
    context = dg.build_sensor_context(instance=instance, resources=resources)
    return monitoring_request(
        context,
        resources["warehouse"],
        resources["mlflow_registry"],
        resources["run_context"],
    )


def test_a_drift_episode_asks_for_one_retrain_which_moves_the_champion(
    drift_champion, tmp_path, instance
):
    data_dir = copied(drift_champion, tmp_path)
    registry = local_registry(data_dir)
    before = registry.alias_version(CHAMPION)

    request = sense(data_dir, instance, NOW)
    assert isinstance(request, dg.RunRequest), request
    assert request.run_key == f"monitoring:{before}:{NOW.isoformat()}"
    assert request.tags["trigger"] == "monitoring"
    # The next tick on the same window asks with the same key: Dagster launches it once.
    assert sense(data_dir, instance, NOW + timedelta(hours=3)).run_key == request.run_key

    result = (
        build_defs(data_dir)
        .resolve_job_def("retrain_job")
        .execute_in_process(instance=instance, run_config=request.run_config, tags=request.tags)
    )
    assert result.success
    after = registry.alias_version(CHAMPION)
    assert after != before
    assert registry.version_tags(after)["trigger"] == "monitoring"

    # The new champion has seen the shift: no window after its as_of yet, nothing to ask.
    again = sense(data_dir, instance, NOW + timedelta(hours=3))
    assert isinstance(again, dg.SkipReason)
    assert "no complete window after the champion's as_of yet" in again.skip_message


def test_a_stable_stream_skips_and_says_why_with_the_numbers(stable_source, tmp_path, instance):
    data_dir = trained(stable_source, tmp_path, instance)
    skipped = sense(data_dir, instance, NOW)
    assert isinstance(skipped, dg.SkipReason), skipped
    assert skipped.skip_message.startswith("0 of the last 3 windows drifted or degraded")
    assert skipped.skip_message.count("max PSI") == 3


def test_the_monitoring_assets_show_drift_performance_and_health(
    drift_champion, tmp_path, instance
):
    data_dir = copied(drift_champion, tmp_path)
    latencies = np.array([5.0, 7.0, 9.0, 120.0, 200.0, 6.0, 8.0, 10.0])
    log = data_dir / "serving" / "requests-20260403.jsonl"
    log.parent.mkdir()
    log.write_text(
        "".join(
            json.dumps(
                {"at": f"2026-04-03T10:00:0{i}", "latency_ms": ms, "rows": 10,
                 "fallbacks": 2 if i < 2 else 0, "status": 200 if i else 400,
                 "model_version": "2", "policy_version": 0}
            ) + "\n"
            for i, ms in enumerate(latencies)
        )
    )  # fmt: skip
    result = run_job(data_dir, instance, "monitoring_job", as_of=NOW.isoformat())
    assert result.success
    drift = result.asset_materializations_for_node("feature_drift")[0].metadata
    assert "volatility" in drift["drifted"].value
    assert drift["psi_plot"].value.startswith("![PSI per column](data:image/png;base64,")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["no_drift_over_threshold"].passed
    assert checks["no_drift_over_threshold"].severity == dg.AssetCheckSeverity.WARN

    live = result.asset_materializations_for_node("live_performance")[0].metadata
    assert live["labeled"].value > 500 and "| week" in live["performance"].value

    health = result.asset_materializations_for_node("serving_health")[0].metadata
    assert health["requests"].value == len(latencies)
    assert f"{np.percentile(latencies, 99):.4f}" in health["daily"].value
    # mean 45.6 ms is within the 75 ms SLA; 4 fallbacks of 80 rows (5%) within 10%
    assert checks["mean_latency_within_sla"].passed
    assert "mean 45.6 ms" in checks["mean_latency_within_sla"].description
    assert checks["fallback_rate_within_sla"].passed
    assert "fallback rate 5.0%" in checks["fallback_rate_within_sla"].description
    assert "error rate 12.5%" in checks["fallback_rate_within_sla"].description
