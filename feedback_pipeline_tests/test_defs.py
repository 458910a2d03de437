"""The Definitions load and hold what DESIGN and the README promise."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.definitions import defs

INGEST_ASSETS = {"raw_predictions", "raw_feedback_events", "baseline_examples", "labeled_outcomes"}
ASSETS = INGEST_ASSETS | {
    "training_set",
    "challenger_models",
    "evaluation_report",
    "champion_model",
}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_assets_and_groups():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ASSETS
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_predictions"] == "ingestion"
    assert groups["labeled_outcomes"] == "labeling"
    assert groups["challenger_models"] == "training"
    assert groups["champion_model"] == "evaluation"


def asset_nodes(job_name: str) -> set[str]:
    return {n.name for n in defs.resolve_job_def(job_name).graph.node_defs} & ASSETS


def test_jobs_select_the_right_assets():
    assert asset_nodes("ingest_job") == INGEST_ASSETS
    assert asset_nodes("retrain_job") == ASSETS
    assert asset_nodes("full_retrain_job") == ASSETS


def test_full_retrain_job_runs_all_families_over_the_wide_window_by_default():
    config = defs.resolve_job_def("full_retrain_job").config_mapping
    resolved = config.resolve_from_unvalidated_config({})
    assert resolved["ops"]["challenger_models"]["config"]["full"] is True
    assert resolved["ops"]["training_set"]["config"]["full"] is True


def test_blocking_checks_exist():
    graph = defs.resolve_asset_graph()
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {
        ("raw_predictions", "records_accounted_for"),
        ("raw_feedback_events", "records_accounted_for"),
        ("baseline_examples", "records_accounted_for"),
        ("labeled_outcomes", "labels_are_valid"),
    }
