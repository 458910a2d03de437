"""The ``feedback-pipeline`` CLI: simulate, then status after ingestion; rollback, policy apply,
predict --version, simulate --format and backtest --landing/--out/--settings, each in process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import duckdb
import pytest

from feedback_pipeline.backtest.replay import BacktestPlan, backtest_id, data_fingerprint
from feedback_pipeline.cli import main
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.served_policy import ServingPolicy
from feedback_pipeline.serving.policy.proposal import PolicyProposal, StageResult
from feedback_pipeline.serving.policy.store import record_proposal
from feedback_pipeline.settings import LabelingSettings, Settings, load_settings
from feedback_pipeline.warehouse import connection as warehouse
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


def cli(data_dir, *args: str) -> int:
    return main(["--data-dir", str(data_dir), *args])


# -- rollback --to VERSION, and a rollback with no previous champion ----------------------------


def test_rollback_needs_a_previous_champion_or_to_version(championed_dir, capsys):
    registry = local_registry(championed_dir)
    champion = registry.alias_version(CHAMPION)
    other = next(v for v in registry.versions() if v != champion)  # the evaluated candidate

    # One retrain, one champion: nothing to go back to
    assert cli(championed_dir, "rollback", "--reason", "canary failed") == 2
    assert capsys.readouterr().err == (
        f"error: no previous champion recorded before version {champion}; pass --to VERSION\n"
    )
    assert cli(championed_dir, "rollback", "--to", "99", "--reason", "x") == 2
    assert "feedback_model has no version 99" in capsys.readouterr().err
    assert registry.alias_version(CHAMPION) == champion

    assert cli(championed_dir, "rollback", "--to", other, "--reason", "canary failed") == 0
    assert capsys.readouterr().out == (
        f"champion: version {champion} -> {other} (rollback, recorded in ops.retraining_events)\n"
    )
    assert registry.alias_version(CHAMPION) == other
    con = duckdb.connect(str(championed_dir / "warehouse.duckdb"), read_only=True)
    last = con.execute(
        "SELECT action, old_version, new_version, reason, trigger FROM ops.retraining_events "
        "ORDER BY recorded_at DESC LIMIT 1"
    ).fetchall()
    con.close()
    assert last == [("rollback", champion, other, "canary failed", "cli")]
    # now the ledger knows the champion before it: a plain rollback goes back there
    assert cli(championed_dir, "rollback", "--reason", "false alarm") == 0
    assert registry.alias_version(CHAMPION) == champion


# -- policy apply VERSION and its errors ------------------------------------------------------


def propose(data_dir, *thresholds: float) -> None:
    """Record one serving-policy proposal per threshold, as serving_policy records them."""
    con = warehouse.connect(data_dir / "warehouse.duckdb")
    try:
        for threshold in thresholds:
            proposal = PolicyProposal(
                policy=ServingPolicy(threshold=threshold),
                current=ServingPolicy(),
                stages=(StageResult("threshold", True, True, f"{threshold}", 100),),
                before={"log_loss": 0.6, "fp_rate": 0.3},
                after={"log_loss": 0.6, "fp_rate": 0.2},
                rows=400,
                held_out_rows=100,
            )
            record_proposal(con, proposal, "2")
    finally:
        con.close()


def test_policy_apply_serves_the_version_asked_for_and_refuses_what_it_cannot(
    championed_dir, capsys
):
    registry = local_registry(championed_dir)
    assert cli(championed_dir, "policy", "apply", "--reason", "x") == 2
    assert capsys.readouterr().err == (
        "error: no proposed serving policy: materialize serving_policy first\n"
    )
    propose(championed_dir, 0.61, 0.62)

    assert cli(championed_dir, "policy", "apply", "3", "--reason", "x") == 2
    assert "no serving policy version 3: see `feedback-pipeline policy history`" in (
        capsys.readouterr().err
    )
    assert cli(championed_dir, "policy", "apply", "1", "--reason", "the older one") == 0
    assert capsys.readouterr().out.startswith("serving policy: v0 -> v1 (apply; ")
    assert registry.active_policy_version() == 1  # not the newest proposal, v2

    assert cli(championed_dir, "policy", "apply", "1", "--reason", "again") == 2
    assert capsys.readouterr().err == "error: serving policy v1 is already active\n"
    assert cli(championed_dir, "policy", "apply", "--reason", "the newest", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "action": "apply",
        "old_version": 1,
        "new_version": 2,
        "reason": "the newest",
    }
    assert registry.active_policy_version() == 2


# -- predict --version --------------------------------------------------------------------------


def test_predict_scores_with_the_version_asked_for(championed_dir, capsys):
    registry = local_registry(championed_dir)
    champion = registry.alias_version(CHAMPION)
    other = next(v for v in registry.versions() if v != champion)
    source = championed_dir / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"prediction_id": f"p{i}", "features": {"momentum": i / 10}}) + "\n"
            for i in range(5)
        )
    )
    args = ["predict", "--input", str(source), "--json"]

    assert cli(championed_dir, *args, "--output", str(championed_dir / "a.jsonl")) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == champion
    out = championed_dir / "b.csv"
    assert cli(championed_dir, *args, "--output", str(out), "--version", other) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["model_version"], counts["rows"], counts["rejected"]) == (other, 5, 0)
    assert duckdb.sql(f"SELECT count(*) FROM read_csv_auto('{out}')").fetchall() == [(5,)]


# -- simulate --format, then backtest --landing --out --settings -----------------------------


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_simulate_writes_the_format_asked_for_and_it_ingests(tmp_path, capsys, file_format):
    landing = tmp_path / "landing"
    args = ["simulate", "--days", "2", "--predictions-per-day", "30", "--seed", "4"]
    assert cli(tmp_path, *args, "--format", file_format, "--out", str(landing)) == 0
    assert "60 predictions" in capsys.readouterr().out
    data_files = [  # beside the stream's deliberate noise: empty .jsonl files, READMEs
        p for p in landing.rglob("*") if p.is_file() and not p.name.startswith(("empty_", "READ"))
    ]
    assert len(data_files) == 7 and {p.suffix for p in data_files} == {f".{file_format}"}
    con = warehouse.connect(tmp_path / "warehouse.duckdb")
    try:
        ingest_kind(con, landing, "predictions")
        rows = con.execute("SELECT count(*) FROM raw.predictions").fetchall()[0][0]
    finally:
        con.close()
    assert 55 <= rows <= 60  # the stream's few bad records are rejected


def test_backtest_reads_the_landing_files_settings_and_writes_to_out(tmp_path, capsys):
    landing, out, data_dir = tmp_path / "landing", tmp_path / "elsewhere", tmp_path / "data"
    args = ["simulate", "--days", "35", "--predictions-per-day", "40", "--seed", "2"]
    assert cli(data_dir, *args, "--format", "csv", "--out", str(landing)) == 0
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        "models:\n  families: [logistic_regression]\n"
        "training:\n  half_life_days: [null]\n"
        "gate:\n  min_holdout_rows: 20\n"
    )
    capsys.readouterr()

    code = cli(
        data_dir, "backtest", "--start", "2026-02-02", "--end", "2026-02-09", "--every", "7d",
        "--landing", str(landing), "--out", str(out), "--settings", str(settings_file), "--json",
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)

    assert not (data_dir / "warehouse.duckdb").exists()  # the landing files, not DATA's tables
    assert not (data_dir / "backtest").exists()  # --out, not DATA/backtest
    assert (out / f"backtest_{summary['backtest_id']}.png").is_file()
    con = warehouse.connect(out / "warehouse.duckdb", read_only=True)
    try:
        predictions = con.execute("SELECT count(*) FROM raw.predictions").fetchall()[0][0]
        periods = con.execute(
            "SELECT DISTINCT period_start FROM backtest.periods WHERE backtest_id = ?",
            [summary["backtest_id"]],
        ).fetchall()
        fingerprint = data_fingerprint(con)
    finally:
        con.close()
    assert predictions > 1300
    assert periods == [(datetime(2026, 2, 2),)]
    plan = BacktestPlan(datetime(2026, 2, 2), datetime(2026, 2, 9), timedelta(days=7))
    settings = load_settings(settings_file)
    assert settings.models.families == ["logistic_regression"]
    assert summary["backtest_id"] == backtest_id(plan, settings, fingerprint)
    assert summary["backtest_id"] != backtest_id(plan, Settings(), fingerprint)
