"""`make bench`: the retrain loop against the bare cost of its two heavy parts, in one run.

Simulates N predictions (default 1,000,000) into a fresh data dir, runs retrain_job in process
against a temp Dagster instance and MLflow store, and measures per asset wall seconds, peak RSS
and rows. References on the same data: DuckDB's bare scan of the landing files and a bare
XGBoost fit with the same parameters on the final training matrix. Writes
benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
from serving_targets import serving_benchmarks, serving_markdown  # benchmarks/, beside this file

from feedback_pipeline.backtest.replay import EXPERIMENT as BACKTEST_EXPERIMENT
from feedback_pipeline.backtest.replay import BacktestPlan, backtest_into
from feedback_pipeline.defs.definitions import build_defs
from feedback_pipeline.defs.resources import local_resources
from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.monitoring.triggers import count_new_labels
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import REFIT_SPLITS
from feedback_pipeline.training.dataset import build_training_set, discover_features, load_info
from feedback_pipeline.training.families import build_estimator
from feedback_pipeline.training.splits import load_split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.schema import KINDS, SQL_TYPES

RESULTS = Path(__file__).parent / "results"
INGEST_STEPS = ("raw_predictions", "raw_feedback_events", "baseline_examples")
DAYS = 60
START = date(2026, 1, 5)


# What the retrain's steps import on first use (see docs/architecture.md).
STEP_LIBRARIES = (
    "mlflow.pyfunc",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.calibration",
    "xgboost",
    "scipy.stats",
    "statsmodels.stats.contingency_tables",
    "matplotlib.pyplot",
)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler(threading.Thread):
    """Samples this process's RSS every 50 ms, so each step's peak can be read afterwards."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.time(), rss_mb()))
            time.sleep(0.05)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return round(max(inside, default=0.0), 1)


def simulate(landing: Path, predictions: int, start: date, days: int, seed: int) -> None:
    """In a subprocess, so the simulator's memory does not count towards the pipeline's RSS."""
    per_day = max(predictions // days, 1)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "feedback_pipeline.cli",
            "simulate",
            "--out",
            str(landing),
            "--start",
            start.isoformat(),
            "--days",
            str(days),
            "--predictions-per-day",
            str(per_day),
            "--baseline-per-day",
            str(per_day // 2),
            "--seed",
            str(seed),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def raw_scan_seconds(landing: Path) -> float:
    """DuckDB's bare `count(*)` over each kind's JSON lines: the floor for reading the data."""
    con = duckdb.connect()
    started = time.perf_counter()
    for kind in ("predictions", "feedback", "baseline"):
        con.execute(
            f"SELECT count(*) FROM read_json('{landing / kind}/*.jsonl', "
            "format = 'newline_delimited', ignore_errors = true)"
        ).fetchall()
    return time.perf_counter() - started


def typed_load_seconds(landing: Path, work: Path) -> float:
    """DuckDB's typed `read_json` of each kind straight into a table: what loading costs with no
    validation, line numbers, de-duplication or accounting. Not in the ratio; it shows how much
    of the ingestion is the data contract's work."""
    con = duckdb.connect(work / "typed_load.duckdb")
    started = time.perf_counter()
    for spec in KINDS.values():
        columns = ", ".join(f"{f.name}: '{SQL_TYPES[f.type]}'" for f in spec.fields)
        con.execute(
            f"CREATE TABLE {spec.kind} AS SELECT * FROM read_json('{landing / spec.kind}/*.jsonl', "
            f"format = 'newline_delimited', ignore_errors = true, columns = {{{columns}}})"
        )
    elapsed = time.perf_counter() - started
    con.close()
    (work / "typed_load.duckdb").unlink()
    return elapsed


def bare_fit_seconds(data_dir: Path) -> tuple[float, int]:
    """A bare XGBoost fit with the pipeline's parameters on the final training matrix."""
    settings = Settings()
    con = warehouse.connect(data_dir / "warehouse.duckdb", read_only=True)
    train = load_split(con, "train", load_info(con).features)
    con.close()
    estimator = build_estimator(
        "xgboost", settings.models.hyperparameters.for_family("xgboost"), settings.models.seed
    )
    started = time.perf_counter()
    estimator.fit(train.X, train.y, sample_weight=train.weight)
    return time.perf_counter() - started, len(train)


def backtest_cost(data_dir: Path, work: Path) -> dict:
    """The backtest's cost per period against a bare reference measured in the same run: per
    period, the SQL that builds the labels and training set as of its start plus a bare XGBoost
    fit of that training set, read out of the warehouse (every final row, what the promoted
    refit learns from; issue 11's "the bare fit of its training set"). The policy's own seconds
    per period (candidate fits on at most training.selection_rows rows, evaluation with
    bootstrap intervals, a refit on every final row, MLflow logging, scoring) over that
    reference. The older reference, a bare fit of the train split only, is reported beside it."""
    settings = Settings()
    end = datetime.combine(START + timedelta(days=DAYS), datetime.min.time())
    plan = BacktestPlan(end - timedelta(days=14), end, timedelta(days=7))
    registry = local_registry(data_dir, experiment=BACKTEST_EXPERIMENT)
    started = time.perf_counter()
    summary, _ = backtest_into(
        work / "backtest", data_dir / "warehouse.duckdb", None, registry, settings, plan
    )
    whole = time.perf_counter() - started
    con = warehouse.connect(work / "backtest" / "warehouse.duckdb")
    policy_seconds = [
        s
        for (s,) in con.execute(
            "SELECT seconds FROM backtest.periods WHERE backtest_id = ? AND policy = 'policy' "
            "ORDER BY period_start",
            [summary.backtest_id],
        ).fetchall()
    ]
    references, train_references = [], []
    for period_start, _ in plan.periods():
        began = time.perf_counter()
        build_labeled_outcomes(con, settings.labeling, period_start)
        features = discover_features(con, settings.features)
        build_training_set(con, settings.training, features, period_start)
        sql = time.perf_counter() - began
        fits = []
        for splits in (REFIT_SPLITS, "train"):
            began = time.perf_counter()  # a bare fit reads its rows out of the warehouse too
            rows = load_split(con, splits, features)
            estimator = build_estimator(
                "xgboost",
                settings.models.hyperparameters.for_family("xgboost"),
                settings.models.seed,
            )
            estimator.fit(rows.X, rows.y, sample_weight=rows.weight)
            fits.append(time.perf_counter() - began)
        references.append(sql + fits[0])
        train_references.append(sql + fits[1])
    con.close()
    return {
        "periods": len(policy_seconds),
        "whole_backtest_s": round(whole, 2),
        "policy_period_s": round(float(np.mean(policy_seconds)), 2),
        "reference_period_s": round(float(np.mean(references)), 2),
        "ratio": round(float(np.mean(policy_seconds) / np.mean(references)), 2),
        "train_split_reference_period_s": round(float(np.mean(train_references)), 2),
        "ratio_to_train_split_reference": round(
            float(np.mean(policy_seconds) / np.mean(train_references)), 2
        ),
    }


def step_metrics(instance: dg.DagsterInstance, run_id: str, sampler: RssSampler) -> dict:
    starts, steps = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            start = starts[event.step_key]
            steps.setdefault(event.step_key, {}).update(
                seconds=round(entry.timestamp - start, 3),
                peak_rss_mb=sampler.peak(start, entry.timestamp),
            )
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            metadata = event.step_materialization_data.materialization.metadata
            if "dagster/row_count" in metadata:
                steps.setdefault(event.step_key, {})["rows_out"] = metadata[
                    "dagster/row_count"
                ].value
    return steps


def sensor_seconds(instance: dg.DagsterInstance, data_dir: Path) -> float:
    context = dg.build_sensor_context(instance=instance, resources=local_resources(data_dir))
    sensor = build_defs(data_dir).resolve_sensor_def("new_labels_sensor")
    started = time.perf_counter()
    sensor(context)
    return time.perf_counter() - started


def sensor_query_seconds_at(rows: int, work: Path) -> float:
    """The sensor's query on a synthetic `labeled.labeled_outcomes` of `rows` rows."""
    con = warehouse.connect(work / "sensor.duckdb")
    con.execute(f"""CREATE OR REPLACE TABLE labeled.labeled_outcomes AS
        SELECT 'p' || i AS prediction_id,
               TIMESTAMP '2026-01-01' + to_seconds(i * 3 + 3600) AS labeled_at
        FROM range({rows}) t(i)""")
    watermark = datetime(2026, 1, 1) + timedelta(seconds=rows * 3 * 0.9)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        count_new_labels(con, watermark, datetime(2100, 1, 1))
        best = min(best, time.perf_counter() - started)
    con.close()
    return best


def run(predictions: int, keep: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="feedback_bench_"))
    data_dir, home = work / "data", work / "dagster"
    home.mkdir(parents=True)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    print(f"simulating {predictions:,} predictions into {data_dir} ...", flush=True)
    simulate(data_dir / "landing", predictions, START, DAYS, seed=7)
    landing_bytes = sum(p.stat().st_size for p in (data_dir / "landing").rglob("*") if p.is_file())
    raw_scan = raw_scan_seconds(data_dir / "landing")
    typed_load = typed_load_seconds(data_dir / "landing", work)
    print(f"raw scan {raw_scan:.2f}s; running retrain_job ...", flush=True)

    sampler = RssSampler()
    sampler.start()
    as_of = (START + timedelta(days=DAYS + 1)).isoformat() + "T00:00:00Z"
    defs = build_defs(data_dir)
    # The MLflow store is set up before the clock starts, like the Dagster instance: creating
    # its tables (about 1.3 s) is a deployment's one-time cost, not part of a retrain.
    local_registry(data_dir).experiment_id()
    # So are the libraries the steps import when they first need them (the code location no
    # longer loads them): a run worker pays them once, and this measures the run, as before.
    for library in STEP_LIBRARIES:
        importlib.import_module(library)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        started = time.perf_counter()
        result = defs.resolve_job_def("retrain_job").execute_in_process(
            instance=instance, run_config={**run_context_config(as_of), **quiet}
        )
        end_to_end = time.perf_counter() - started
        assert result.success
        steps = step_metrics(instance, result.run_id, sampler)
        sensor_s = sensor_seconds(instance, data_dir)

        # 1% more predictions, on the next day: ingest only what is new.
        simulate(
            data_dir / "landing_new", predictions // 100, START + timedelta(days=DAYS), 1, seed=8
        )
        for kind_dir in (data_dir / "landing_new").iterdir():
            for file in kind_dir.iterdir():
                if file.suffix == ".jsonl" and not file.name.startswith(("empty_", "README")):
                    shutil.move(file, data_dir / "landing" / kind_dir.name / f"new_{file.name}")
        started = time.perf_counter()
        incremental = dg.materialize(
            [a for a in defs.assets if a.key.path[0] in INGEST_STEPS],
            instance=instance,
            resources=local_resources(data_dir),
            raise_on_error=True,
        )
        incremental_run_s = time.perf_counter() - started
        assert incremental.success
        # Measured like the full ingest: the three ingestion steps, without the run's start-up.
        incremental_steps = step_metrics(instance, incremental.run_id, sampler)
        incremental_s = sum(incremental_steps[step]["seconds"] for step in INGEST_STEPS)
    sampler.running = False
    print("serving and monitoring targets ...", flush=True)
    serving = serving_benchmarks(data_dir, work, datetime.fromisoformat(as_of[:-1]))

    bare_fit, train_rows = bare_fit_seconds(data_dir)
    print("backtest: two weekly periods ...", flush=True)
    backtest = backtest_cost(data_dir, work)
    con = warehouse.connect(data_dir / "warehouse.duckdb", read_only=True)
    feedback_events = con.execute("SELECT count(*) FROM raw.feedback_events").fetchall()[0][0]
    labeled = con.execute("SELECT count(*) FROM labeled.labeled_outcomes").fetchall()[0][0]
    con.close()
    full_ingest = sum(steps[s]["seconds"] for s in INGEST_STEPS)
    per_asset = {k: v["seconds"] for k, v in steps.items() if "_" in k}
    reference = raw_scan + bare_fit
    results = {
        "measured_at": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "predictions": predictions,
        "feedback_events": feedback_events,
        "labeled_rows": labeled,
        "train_rows": train_rows,
        "landing_mb": round(landing_bytes / 2**20, 1),
        "end_to_end_s": round(end_to_end, 2),
        "peak_rss_mb": sampler.peak(),
        "per_asset": per_asset,
        "per_step": steps,
        "reference": {"raw_scan_s": round(raw_scan, 2), "bare_fit_s": round(bare_fit, 2)},
        "typed_load_s": round(typed_load, 2),
        "full_ingest_s": round(full_ingest, 2),
        "incremental_ingest_s": round(incremental_s, 2),
        "incremental_ingest_run_s": round(incremental_run_s, 2),
        "sensor_eval_s": round(sensor_s, 4),
        "sensor_query_10m_rows_s": round(sensor_query_seconds_at(10_000_000, work), 4),
        "backtest": backtest,
        "serving": serving,
        "ratios": {
            "ingest_vs_scan": round(full_ingest / raw_scan, 2),
            "ingest_vs_typed_load": round(full_ingest / typed_load, 2),
            "train_vs_fit": round(steps["challenger_models"]["seconds"] / bare_fit, 2),
            "end_to_end_vs_reference": round(end_to_end / reference, 2),
            "end_to_end_vs_typed_load_and_fit": round(end_to_end / (typed_load + bare_fit), 2),
            "incremental_vs_full_ingest": round(incremental_s / full_ingest, 3),
            "backtest_period_vs_sql_and_fit": backtest["ratio"],
        },
    }
    results["markdown"] = summary_markdown(results)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def summary_markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {name} | {step.get('seconds', '')} | {step.get('peak_rss_mb', '')} | "
        f"{step.get('rows_out', '')} |"
        for name, step in r["per_step"].items()
    )
    ratios = r["ratios"]
    return f"""## {r["predictions"]:,} predictions, {r["feedback_events"]:,} feedback events \
({r["landing_mb"]} MB of landing files), {r["machine"]["cores"]} cores

| step | seconds | peak RSS MB | rows out |
|---|---:|---:|---:|
{rows}

| measure | value |
|---|---:|
| end to end (retrain_job) | {r["end_to_end_s"]} s |
| peak RSS | {r["peak_rss_mb"]} MB |
| reference: DuckDB raw scan of the landing files | {r["reference"]["raw_scan_s"]} s |
| reference: bare XGBoost fit ({r["train_rows"]:,} rows) | {r["reference"]["bare_fit_s"]} s |
| typed load, no checks (DuckDB `read_json` into tables; not in the ratio) | \
{r["typed_load_s"]} s |
| ingest vs scan | {ratios["ingest_vs_scan"]} |
| ingest vs typed load | {ratios["ingest_vs_typed_load"]} |
| train vs fit | {ratios["train_vs_fit"]} |
| end to end vs reference | {ratios["end_to_end_vs_reference"]} |
| end to end vs typed load + bare fit (not the target) | \
{ratios["end_to_end_vs_typed_load_and_fit"]} |
| incremental ingest (+1% files) | {r["incremental_ingest_s"]} s \
({ratios["incremental_vs_full_ingest"]:.1%} of the full {r["full_ingest_s"]} s; the whole run \
with its start-up {r["incremental_ingest_run_s"]} s) |
| new-labels sensor evaluation | {r["sensor_eval_s"]} s |
| sensor query at 10M labeled rows | {r["sensor_query_10m_rows_s"]} s |
| backtest: one period of the policy (mean of {r["backtest"]["periods"]}) | \
{r["backtest"]["policy_period_s"]} s |
| backtest reference: labels + training-set SQL + reading and bare fit of its training set | \
{r["backtest"]["reference_period_s"]} s |
| backtest period vs reference (target about 1.5) | {ratios["backtest_period_vs_sql_and_fit"]} |
| backtest period vs SQL + bare fit of the train split only (the older reference) | \
{r["backtest"]["ratio_to_train_split_reference"]} \
({r["backtest"]["train_split_reference_period_s"]} s) |

Serving and monitoring (issue 13), champion version {r["serving"]["champion_version"]}:

{serving_markdown(r["serving"])}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir")
    args = parser.parse_args()
    results = run(args.predictions, args.keep)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / "latest.md").write_text(results["markdown"])
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
