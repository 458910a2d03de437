"""The ``feedback-pipeline`` CLI: simulate, then status after ingestion."""

from __future__ import annotations

import subprocess
import sys

from feedback_pipeline.cli import main
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.settings import LabelingSettings
from feedback_pipeline_tests.labels.test_outcomes import FAR_FUTURE


def test_simulate_then_status(data_dir, con, capsys):
    assert (
        main(
            [
                "--data-dir",
                str(data_dir),
                "simulate",
                "--days",
                "3",
                "--predictions-per-day",
                "40",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert "120 predictions" in capsys.readouterr().out
    for kind in ("predictions", "feedback", "baseline"):
        ingest_kind(con, data_dir / "landing", kind)
    build_labeled_outcomes(con, LabelingSettings(), FAR_FUTURE)
    con.close()

    assert main(["--data-dir", str(data_dir), "status"]) == 0
    out = capsys.readouterr().out
    for section in (
        "## Tables",
        "## Rejected records by reason",
        "## Labels by source and environment",
        "## Feedback events",
    ):
        assert section in out
    assert "| raw.predictions" in out


def test_status_without_warehouse_says_what_to_do(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "status"]) == 1
    assert "make demo" in capsys.readouterr().out


def test_simulate_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "simulate", "--bad-rate", "2"]) == 2
    assert "bad_rate" in capsys.readouterr().err


def test_a_held_warehouse_lock_is_an_error_that_says_what_to_do(data_dir, con, capsys):
    """Another process (a run, `make dev`) holds DuckDB's write lock: status says so, fast."""
    con.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
            " time.sleep(60)",
            str(data_dir / "warehouse.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["--data-dir", str(data_dir), "status"]) == 3
        error = capsys.readouterr().err
        assert "holds its write lock" in error and "retry" in error
    finally:
        holder.kill()
        holder.wait()


def test_every_command_explains_itself(capsys):
    """``--help`` of every command prints its usage (a ``%`` in a help text once crashed it)."""
    from feedback_pipeline.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"simulate", "stream", "backtest", "serve", "policy", "quarantine"} <= set(commands)
    for name in commands:
        try:
            main([name, "--help"])
        except SystemExit as done:
            assert done.code == 0, name
        assert f"usage: feedback-pipeline {name}" in capsys.readouterr().out, name
