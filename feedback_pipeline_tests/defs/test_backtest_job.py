"""backtest_job in a real Dagster instance: the asset replays two weekly periods of the live
warehouse's data, and its metadata tells the story (the policy and its baselines side by side,
the policy against each baseline, the accuracy plot, the MLflow run) while the live model name
keeps no version."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import default_tracking_uri
from feedback_pipeline_tests.defs.test_analytics_job import metadata
from feedback_pipeline_tests.defs.test_retrain_job import AS_OF


def test_backtest_job_shows_the_policy_against_its_baselines(simulated_dir, instance):
    config = run_context_config(AS_OF)
    config["ops"] = {
        "backtest_report": {
            "config": {"start": "2026-02-02T00:00:00Z", "end": "2026-02-16T00:00:00Z"}
        }
    }
    result = (
        build_defs(simulated_dir)
        .resolve_job_def("backtest_job")
        .execute_in_process(instance=instance, run_config=config)
    )
    assert result.success
    shown = metadata(result, "backtest_report")
    assert shown["periods"].value == 2
    summary = shown["summary"].value
    for policy in ("policy", "no_retrain", "retrain_always", "refit_everything"):
        assert f"| {policy}" in summary
    paired = shown["policy_vs_baselines"].value
    assert "only_policy_right" in paired and "mcnemar_p" in paired
    for baseline in ("no_retrain", "retrain_always", "refit_everything"):
        assert f"| {baseline}" in paired
    assert shown["accuracy_per_period"].value.startswith("![accuracy](data:image/png;base64,iVBOR")

    mlflow.set_tracking_uri(default_tracking_uri(simulated_dir))
    run = MlflowClient().get_run(shown["mlflow_run_id"].value)
    assert run.data.params["backtest_id"] == shown["backtest_id"].value
    assert 0.0 <= run.data.metrics["policy_vs_refit_everything_mcnemar_p"] <= 1.0
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "backtest")}
    assert "backtest/policy_vs_baselines.md" in artifacts
    # the backtest trained under its own model names: the live one has no version
    assert local_registry(simulated_dir).versions() == []
