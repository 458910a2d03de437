"""The Definitions load and hold what DESIGN and the README promise."""

from __future__ import annotations

import dagster as dg

from feedback_pipeline.definitions import defs

ASSETS = {"raw_predictions", "raw_feedback_events", "baseline_examples", "labeled_outcomes"}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_assets_and_groups():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == ASSETS
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw_predictions"] == "ingestion"
    assert groups["labeled_outcomes"] == "labeling"


def test_ingest_job_selects_ingestion_and_labels():
    job = defs.resolve_job_def("ingest_job")
    assert {node.name for node in job.graph.node_defs} >= ASSETS


def test_blocking_checks_exist():
    graph = defs.resolve_asset_graph()
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {
        ("raw_predictions", "records_accounted_for"),
        ("raw_feedback_events", "records_accounted_for"),
        ("baseline_examples", "records_accounted_for"),
        ("labeled_outcomes", "labels_are_valid"),
    }
