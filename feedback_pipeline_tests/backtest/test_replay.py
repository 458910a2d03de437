"""The backtest replays the live code path as of each period, leaves the live champion alone,
scores every period with models trained before it, and resumes without redoing a period."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

import duckdb
import pytest
from mlflow import MlflowClient

from feedback_pipeline.backtest.replay_registry import ReplayRegistry
from feedback_pipeline.cli import main
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION, default_tracking_uri
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF
from feedback_pipeline_tests.servers import BIN, without_mlflow_env
from feedback_pipeline_tests.training.test_model_behaviour import retrain

ARGS = ["backtest", "--start", "2026-01-26", "--end", "2026-02-16", "--every", "7d"]
PERIODS = [datetime(2026, 1, 26), datetime(2026, 2, 2), datetime(2026, 2, 9)]


@pytest.fixture(scope="module")
def backtested(tmp_path_factory, simulated_source):
    """A live champion first, then a backtest over three weekly periods."""
    import shutil

    data_dir = tmp_path_factory.mktemp("backtest") / "data"
    shutil.copytree(simulated_source, data_dir)
    con = warehouse.connect(data_dir / "warehouse.duckdb")
    live = local_registry(data_dir)
    build_training_set(con, Settings().training, discover_features(con, None), SIMULATED_AS_OF)
    retrain(con, live)
    con.close()
    before = (live.alias_version(CHAMPION), live.alias_version(CHALLENGER), live.versions())
    environment = without_mlflow_env()
    command = [str(BIN / "feedback-pipeline"), "--data-dir", str(data_dir), *ARGS, "--json"]
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (data_dir / "stdout.txt").write_text(run.stdout)
    (data_dir / "stderr.txt").write_text(run.stderr)
    return data_dir, before


def test_json_prints_json_alone_and_the_log_has_a_line_per_period(backtested):
    data_dir, _ = backtested
    summary = json.loads((data_dir / "stdout.txt").read_text())  # the whole of stdout
    assert summary["backtest_id"] and len(summary["overall"]) == 4
    log = (data_dir / "stderr.txt").read_text().splitlines()
    periods = [line for line in log if line.startswith("[")]
    assert [line.split(":")[0] for line in periods] == [
        f"[{i}/{len(PERIODS)}] {p:%Y-%m-%d}" for i, p in enumerate(PERIODS, 1)
    ]
    # no per-model chatter: the replay's versions never go through MLflow
    noise = ("Downloading artifacts", "Created version", "already exists", "Validating input")
    assert not [line for line in log if any(n in line for n in noise)]
    registered = MlflowClient(default_tracking_uri(data_dir)).search_registered_models()
    assert [m.name for m in registered] == ["feedback_model"]  # the live one only


def query(data_dir, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "backtest" / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_one_periods_row_per_period_and_policy(backtested):
    data_dir, _ = backtested
    rows = query(
        data_dir,
        "SELECT policy, list(period_start ORDER BY period_start) FROM backtest.periods "
        "GROUP BY policy",
    )
    by_policy = dict(rows)
    assert by_policy["policy"] == PERIODS
    assert by_policy["retrain_always"] == PERIODS
    assert by_policy["refit_everything"] == PERIODS
    assert set(by_policy["no_retrain"]) <= set(PERIODS)
    # each period's metrics, recorded by the summary, are its predictions' against the labels
    checked = query(
        data_dir,
        """SELECT b.policy, b.period_start, any_value(b.accuracy),
                  avg(((p.probability >= 0.5)::INT = l.label)::DOUBLE), count(*)
           FROM backtest.periods b
           JOIN backtest.predictions p USING (backtest_id, policy, period_start)
           JOIN labeled.labeled_outcomes l USING (prediction_id)
           GROUP BY ALL""",
    )
    assert {policy for policy, *_ in checked} == set(by_policy)
    for policy, start, recorded, computed, labeled in checked:
        assert labeled > 0 and recorded == pytest.approx(computed), (policy, start)


def test_the_live_champion_is_untouched(backtested):
    data_dir, before = backtested
    live = local_registry(data_dir)
    assert (live.alias_version(CHAMPION), live.alias_version(CHALLENGER), live.versions()) == before


def test_every_period_is_scored_by_a_model_trained_before_it(backtested):
    data_dir, _ = backtested
    scored = query(
        data_dir,
        """SELECT b.policy, b.version, b.period_start, min(p.predicted_at), max(p.predicted_at),
                  count(*)
           FROM backtest.predictions b JOIN raw.predictions p USING (prediction_id)
           WHERE b.policy IN ('policy', 'retrain_always') AND b.version IS NOT NULL
           GROUP BY ALL""",
    )
    # before its first champion a policy serves what the system served: the confidence
    fallback = query(
        data_dir,
        """SELECT count(*), count(*) FILTER (WHERE b.probability = p.confidence)
           FROM backtest.predictions b JOIN raw.predictions p USING (prediction_id)
           WHERE b.version IS NULL AND b.policy <> 'refit_everything'""",
    )[0]
    assert fallback[0] == fallback[1]
    assert scored
    for policy, version, period_start, first, last, _ in scored:
        registry = ReplayRegistry(
            data_dir / "backtest" / "models" / f"{backtest_id(data_dir)}_{policy}", policy
        )
        tags = registry.version_tags(version)
        # trained as of (and on labels up to) a time no later than the period's start ...
        assert datetime.fromisoformat(tags["as_of"]) <= period_start
        assert datetime.fromisoformat(tags["data_watermark"]) <= period_start
        # ... and it scored only predictions made in or after that period
        assert first >= period_start and last < period_start + (PERIODS[1] - PERIODS[0])


def backtest_id(data_dir) -> str:
    ((value,),) = query(data_dir, "SELECT DISTINCT backtest_id FROM backtest.periods")
    return value


def test_resuming_redoes_no_finished_period(backtested, capsys):
    data_dir, _ = backtested
    done = query(data_dir, "SELECT policy, period_start, recorded_at FROM backtest.periods")
    last = PERIODS[-1]
    con = duckdb.connect(str(data_dir / "backtest" / "warehouse.duckdb"))
    con.execute("DELETE FROM backtest.periods WHERE period_start = ?", [last])
    con.execute("DELETE FROM backtest.predictions WHERE period_start = ?", [last])
    con.close()
    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), *ARGS, "--json"]) == 0
    captured = capsys.readouterr()
    assert "2 already done" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert {row["policy"] for row in summary["overall"]} == {
        "policy",
        "no_retrain",
        "retrain_always",
        "refit_everything",
    }
    # the policy against each baseline, on the same rows: McNemar's counts give the accuracy gap
    accuracy = {row["policy"]: row["accuracy"] for row in summary["overall"]}
    rows = {row["policy"]: row["rows"] for row in summary["overall"]}
    paired = {row["baseline"]: row for row in summary["policy_vs_baselines"]}
    assert set(paired) == {"no_retrain", "retrain_always", "refit_everything"}
    for baseline, row in paired.items():
        assert row["rows"] == rows["policy"] == rows[baseline]
        gap = (row["only_policy_right"] - row["only_baseline_right"]) / row["rows"]
        assert gap == pytest.approx(accuracy["policy"] - accuracy[baseline], abs=1e-12)
        assert 0.0 <= row["mcnemar_p"] <= 1.0
    again = query(data_dir, "SELECT policy, period_start, recorded_at FROM backtest.periods")
    kept = {(p, s): r for p, s, r in done if s != last and p != "no_retrain"}
    assert {(p, s): r for p, s, r in again if (p, s) in kept} == kept  # not redone
    assert {s for p, s, _ in again if p == "policy"} == set(PERIODS)  # the stopped one is done


def test_a_fresh_replay_into_a_new_folder_starts_without_a_champion(backtested, capsys):
    """The same backtest again into an empty folder, with the same MLflow store: nothing of the
    first replay (its champions were trained on every period) carries over."""
    data_dir, _ = backtested
    first = json.loads((data_dir / "stdout.txt").read_text())
    out = data_dir / "second_backtest"
    assert main(["--data-dir", str(data_dir), *ARGS, "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["backtest_id"] == first["backtest_id"]
    assert again["overall"] == first["overall"]
