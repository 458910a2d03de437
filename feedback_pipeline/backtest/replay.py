"""Replay the retraining policy as of each period's start and score the period prequentially.

For every period the same code path as a live retrain runs as of the period's start: labels,
training set, challengers, gate, refit. The period's predictions are then scored by the champion
of that moment, before their labels were known; they are judged at the end against the labels
that arrived. Baselines run in the same replay: no retrain (the policy's first champion
forever), retrain-always (gate off) and a plain XGBoost refit on all past labels every period.
Each registry-backed policy has its own MLflow model name, so the live champion never moves.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.backtest.replay_registry import ReplayRegistry
from feedback_pipeline.backtest.summary import (
    NO_RETRAIN,
    POLICY,
    REFIT_EVERYTHING,
    RETRAIN_ALWAYS,
    BacktestSummary,
    accuracy_plot,
    log_summary,
    summarize,
)
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.metrics import predict_probability
from feedback_pipeline.progress import Progress, quiet
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION, MODEL_NAME
from feedback_pipeline.retrain import retrain_on, training_set_as_of
from feedback_pipeline.settings import Settings, with_overrides
from feedback_pipeline.training.dataset import (
    TrainingSetError,
    build_training_set,
    discover_features,
)
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.quarantine import quarantined_weeks
from feedback_pipeline.training.splits import Split
from feedback_pipeline.warehouse.connection import connect, transaction
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline.warehouse.tables import (
    BACKTEST_PERIODS,
    BACKTEST_PREDICTIONS,
    LABELED_OUTCOMES,
    RAW_BASELINE_EXAMPLES,
    RAW_PREDICTIONS,
)

EXPERIMENT = "feedback_pipeline_backtest"
WARM_UP = timedelta(days=28)

# what a period's row says when it is written (its metrics come later, with the labels)
PERIOD_COLUMNS = (
    "(backtest_id, policy, period_start, period_end, champion_version, promoted, reason, rows, "
    "seconds, recorded_at)"
)

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry


@dataclass(frozen=True)
class BacktestPlan:
    start: datetime
    end: datetime
    every: timedelta

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"--end {self.end} must be after --start {self.start}")
        if self.every <= timedelta(0):
            raise ValueError(f"--every must be positive, got {self.every}")

    def periods(self) -> list[tuple[datetime, datetime]]:
        starts = pd.date_range(self.start, self.end, freq=self.every, inclusive="left")
        return [(s.to_pydatetime(), min(s.to_pydatetime() + self.every, self.end)) for s in starts]


def default_start(con: duckdb.DuckDBPyConnection) -> datetime:
    """Four weeks of data after the first prediction, at midnight: enough to train the first
    champion on."""
    (first,) = con.execute(f"SELECT min(predicted_at) FROM {RAW_PREDICTIONS}").fetchall()[0]
    if first is None:
        raise ValueError("no predictions in the warehouse: ingest some first")
    return datetime.combine((first + WARM_UP).date(), datetime.min.time())


def backtest_id(plan: BacktestPlan, settings: Settings, data_fingerprint: str) -> str:
    """The same plan, settings and data: the same backtest, which a rerun resumes."""
    key = json.dumps(
        [
            str(plan.start),
            str(plan.end),
            plan.every.total_seconds(),
            settings.model_dump(),
            data_fingerprint,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.md5(key.encode()).hexdigest()[:10]


def data_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """What the replay reads, by content: per raw table, its row count and an order-free hash
    of every row (one set-based pass each), so another stream of the same size and dates, or
    one changed outcome, is another backtest."""
    parts = []
    for spec in KINDS.values():
        columns = ", ".join(spec.columns)
        parts.append(f"SELECT '{spec.kind}', count(*), bit_xor(hash({columns})) FROM {spec.table}")
    rows = con.execute(" UNION ALL ".join(parts) + " ORDER BY 1").fetchall()
    return json.dumps(rows, default=str)


def policy_settings(settings: Settings) -> dict[str, Settings]:
    """The registry-backed policies: the configured one, and the same with the gate off."""
    return {
        POLICY: settings,
        RETRAIN_ALWAYS: with_overrides(settings, {"gate": {"mode": "always"}}),
    }


def period_predictions(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, features: list[str]
) -> tuple[np.ndarray, pd.DataFrame]:
    """Ids and float64 features of the predictions made in ``[start, end)``."""
    structure = json.dumps({name: "DOUBLE" for name in features})
    columns = ", ".join(f'f."{n}" AS "{n}"' for n in features)
    frame = con.execute(
        f"""
        SELECT prediction_id, {columns} FROM (
            SELECT prediction_id, predicted_at, json_transform(features, '{structure}') AS f
            FROM {RAW_PREDICTIONS} WHERE predicted_at >= ? AND predicted_at < ?)
        ORDER BY predicted_at, prediction_id
        """,
        [start, end],
    ).df()
    return frame.pop("prediction_id").to_numpy(), frame.astype("float64")


def served_confidence(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime
) -> tuple[np.ndarray, np.ndarray]:
    """What consumers had before any champion: the confidence the system served."""
    arrays = con.execute(
        f"SELECT prediction_id, confidence FROM {RAW_PREDICTIONS} "
        "WHERE predicted_at >= ? AND predicted_at < ? ORDER BY predicted_at, prediction_id",
        [start, end],
    ).fetchnumpy()
    return np.asarray(arrays["prediction_id"], dtype=object), np.asarray(arrays["confidence"])


def refit_everything(
    con: duckdb.DuckDBPyConnection, settings: Settings, features: list[str], as_of: datetime
):
    """The plain baseline: XGBoost with the default parameters on every label known at
    ``as_of`` (feedback and baseline rows, unweighted, no window, nothing withheld)."""
    structure = json.dumps({name: "DOUBLE" for name in features})
    columns = ", ".join(f'f."{n}"' for n in features)
    arrays = con.execute(
        f"""
        SELECT label, {columns} FROM (
            SELECT label, json_transform(features, '{structure}') AS f FROM {LABELED_OUTCOMES}
            WHERE labeled_at <= $as_of AND predicted_at <= $as_of
            UNION ALL
            SELECT label, json_transform(features, '{structure}') FROM {RAW_BASELINE_EXAMPLES}
            WHERE as_of <= $as_of
              AND example_id NOT IN (SELECT prediction_id FROM {LABELED_OUTCOMES}))
        """,
        {"as_of": as_of},
    ).fetchnumpy()
    y = np.asarray(arrays["label"], dtype=np.int64)
    if len(np.unique(y)) < 2:
        return None
    X = pd.DataFrame({n: np.ma.filled(arrays[n].astype(np.float64), np.nan) for n in features})
    never = np.zeros(len(y), dtype="datetime64[us]")  # times play no part in a plain refit
    split = Split(X, y, np.ones(len(y)), never, never)
    return fit(
        "xgboost",
        settings.models.hyperparameters.for_family("xgboost"),
        split,
        settings.models.seed,
    )


def run_backtest(
    con: duckdb.DuckDBPyConnection,
    models: Path,
    settings: Settings,
    plan: BacktestPlan,
    progress: Progress = print,
) -> BacktestSummary:
    """Replay ``plan`` on the raw tables of ``con`` (the backtest's own warehouse), resuming
    after the last finished period of the same backtest. Each registry-backed policy keeps its
    versions in a replay registry under ``models`` (see ``replay_registry``)."""
    run_id = backtest_id(plan, settings, data_fingerprint(con))
    registries = {
        name: ReplayRegistry(models / f"{run_id}_{name}", f"{MODEL_NAME}_backtest_{run_id}_{name}")
        for name in policy_settings(settings)
    }
    finished = {
        start
        for (start,) in con.execute(
            f"SELECT DISTINCT period_start FROM {BACKTEST_PERIODS} WHERE backtest_id = ? "
            "AND policy = ?",
            [run_id, POLICY],
        ).fetchall()
    }
    # Each policy starts from the champion its last finished period left (none on a fresh
    # start), whatever the aliases say: a replay stopped after moving an alias but before
    # recording its period must not serve that period's champion to the period itself.
    for name, registry in registries.items():
        last = con.execute(
            f"SELECT champion_version FROM {BACKTEST_PERIODS} WHERE backtest_id = ? "
            "AND policy = ? ORDER BY period_start DESC LIMIT 1",
            [run_id, name],
        ).fetchall()
        if last and last[0][0] is not None:
            registry.set_alias(CHAMPION, last[0][0])
        else:
            registry.clear_alias(CHAMPION)
        registry.clear_alias(CHALLENGER)  # nothing reads it in a replay
    periods = plan.periods()
    progress(
        f"backtest {run_id}: {len(periods)} periods of {plan.every} from {plan.start} to "
        f"{plan.end}; {len(finished)} already done"
    )
    for index, (start, end) in enumerate(periods, 1):
        if start in finished:
            continue
        # the monthly full retrain's half-life search, in the first period of each month
        monthly = index == 1 or (start.year, start.month) != (
            periods[index - 2][0].year,
            periods[index - 2][0].month,
        )
        began = time.perf_counter()
        rows: list[tuple] = []
        scored: list[pd.DataFrame] = []
        # The policies differ only in their gate: labels and training set are built once
        # (a policy whose gate quarantined weeks of labels builds its own set without them).
        features, unusable, shared = None, None, None
        build_labeled_outcomes(con, settings.labeling, start)
        labels_seconds = time.perf_counter() - began  # every policy, the baseline too, reads them
        try:
            features = discover_features(con, settings.features)
            shared = build_training_set(con, settings.training, features, start)
        except TrainingSetError as error:
            unusable = f"no retrain: {error}"
        shared_seconds = time.perf_counter() - began
        for name, policy in policy_settings(settings).items():
            policy_began = time.perf_counter()
            registry = registries[name]
            promoted, reason = False, unusable or ""
            if unusable is None:
                try:
                    own = quarantined_weeks(con, registry.model_name, start)
                    built = (
                        training_set_as_of(con, policy, start, registry.model_name, labels=False)
                        if own
                        else shared
                    ).info
                    change = retrain_on(
                        con,
                        registry,
                        policy,
                        built,
                        "backtest",
                        half_life_search=monthly,
                        tags={"backtest_id": run_id},
                        progress=quiet,
                    ).change
                    promoted, reason = change.promoted, change.reason
                except ValueError as error:  # e.g. a single class in train
                    reason = f"no retrain: {error}"
            version = registry.alias_version(CHAMPION)
            if version is None:  # no model yet: consumers keep the confidence the system served
                ids, p = served_confidence(con, start, end)
            else:
                ids, X = period_predictions(con, start, end, registry_features(registry, version))
                p = registry.predict_probability(version, X).to_numpy() if len(ids) else []
            if len(ids):
                scored.append(backtest_frame(run_id, name, ids, start, version, p))
            # what one policy costs: the shared labels and training set plus its own work
            spent = shared_seconds + time.perf_counter() - policy_began
            rows.append((name, version, promoted, reason, len(ids), spent))
        # the plain baseline: refit on every label known at the period's start (its cost: the
        # shared labels it reads plus its own query, fit and scoring)
        baseline_began = time.perf_counter()
        model = refit_everything(con, settings, features, start) if features else None
        if model is None:
            ids, p = served_confidence(con, start, end)
            reason = "no labels of both classes yet: the served confidence"
        else:
            ids, X = period_predictions(con, start, end, features)
            p = predict_probability(model, X) if len(ids) else []
            reason = "refit on all past labels"
        if len(ids):
            scored.append(backtest_frame(run_id, REFIT_EVERYTHING, ids, start, None, p))
        seconds = labels_seconds + time.perf_counter() - baseline_began
        rows.append((REFIT_EVERYTHING, None, model is not None, reason, len(ids), seconds))
        seconds = time.perf_counter() - began
        with transaction(con):
            for chunk in scored:
                con.register("scored_chunk", chunk)
                con.execute(f"INSERT INTO {BACKTEST_PREDICTIONS} SELECT * FROM scored_chunk")
                con.unregister("scored_chunk")
            con.executemany(
                f"INSERT INTO {BACKTEST_PERIODS} {PERIOD_COLUMNS} "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
                [
                    [run_id, name, start, end, version, promoted, reason, n, spent]
                    for name, version, promoted, reason, n, spent in rows
                ],
            )
        policy_row = rows[0]
        reason = (policy_row[3] or "").split(":")[0][:80]  # the rule that decided, not its numbers
        progress(
            f"[{index}/{len(periods)}] {start:%Y-%m-%d}: champion v{policy_row[1]} "
            f"({'promoted' if policy_row[2] else 'kept'}: {reason}), {policy_row[4]} predictions "
            f"scored, {seconds:.1f} s"
        )
    score_no_retrain(con, run_id, registries[POLICY], plan)
    return summarize(con, run_id, settings)


def registry_features(registry: ReplayRegistry, version: str) -> list[str]:
    return json.loads(registry.version_tags(version)["features"])


def backtest_frame(
    run_id: str, policy: str, ids: np.ndarray, start: datetime, version: str | None, p: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "backtest_id": run_id,
            "policy": policy,
            "prediction_id": ids,
            "period_start": start,
            "version": version,
            "probability": np.asarray(p, dtype=np.float64),
        }
    )


def score_no_retrain(
    con: duckdb.DuckDBPyConnection, run_id: str, registry: ReplayRegistry, plan: BacktestPlan
) -> None:
    """The no-retrain baseline: the policy's first champion scores every later period."""
    con.execute(
        f"DELETE FROM {BACKTEST_PREDICTIONS} WHERE backtest_id = ? AND policy = ?",
        [run_id, NO_RETRAIN],
    )
    con.execute(
        f"DELETE FROM {BACKTEST_PERIODS} WHERE backtest_id = ? AND policy = ?",
        [run_id, NO_RETRAIN],
    )
    first = con.execute(
        f"""SELECT champion_version, period_start FROM {BACKTEST_PERIODS}
            WHERE backtest_id = ? AND policy = ? AND champion_version IS NOT NULL
            ORDER BY period_start LIMIT 1""",
        [run_id, POLICY],
    ).fetchall()
    version, since = first[0] if first else (None, plan.end)
    with transaction(con):  # before the first champion: the served confidence, as the policy
        con.execute(
            f"""INSERT INTO {BACKTEST_PREDICTIONS}
                SELECT backtest_id, '{NO_RETRAIN}', prediction_id, period_start, version,
                       probability
                FROM {BACKTEST_PREDICTIONS}
                WHERE backtest_id = ? AND policy = '{POLICY}' AND period_start < ?""",
            [run_id, since],
        )
        con.execute(
            f"""INSERT INTO {BACKTEST_PERIODS} {PERIOD_COLUMNS}
                SELECT backtest_id, '{NO_RETRAIN}', period_start, period_end, NULL, false,
                       'no champion yet: the served confidence', rows, 0, now()
                FROM {BACKTEST_PERIODS}
                WHERE backtest_id = ? AND policy = '{POLICY}' AND period_start < ?""",
            [run_id, since],
        )
    if version is None:
        return
    ids, X = period_predictions(con, since, plan.end, registry_features(registry, version))
    if not len(ids):
        return
    p = registry.predict_probability(version, X).to_numpy()
    scored = backtest_frame(run_id, NO_RETRAIN, ids, since, version, p)
    with transaction(con):
        con.register("scored_chunk", scored)
        con.execute(
            f"""INSERT INTO {BACKTEST_PREDICTIONS}
                SELECT s.backtest_id, s.policy, s.prediction_id, p.period_start, s.version,
                       s.probability
                FROM scored_chunk s
                JOIN {BACKTEST_PREDICTIONS} p
                  ON p.backtest_id = s.backtest_id AND p.policy = '{POLICY}'
                 AND p.prediction_id = s.prediction_id"""
        )
        con.unregister("scored_chunk")
        con.execute(
            f"""INSERT INTO {BACKTEST_PERIODS} {PERIOD_COLUMNS}
                SELECT backtest_id, '{NO_RETRAIN}', period_start, period_end, ?, false,
                       'the first champion, never retrained', rows, 0, now()
                FROM {BACKTEST_PERIODS}
                WHERE backtest_id = ? AND policy = '{POLICY}' AND period_start >= ?""",
            [version, run_id, since],
        )


def prepare_warehouse(
    con: duckdb.DuckDBPyConnection, source: Path | None, landing: Path | None, progress: Progress
) -> None:
    """The backtest's one ingest: landing files into its own warehouse (idempotent: files
    already ingested are skipped), or a copy of the raw tables of the live warehouse."""
    if landing is not None:
        for kind in KINDS:
            results = ingest_kind(con, landing, kind)
            progress(f"{kind}: {sum(r.status != 'skipped' for r in results)} new file(s)")
        return
    if source is None or not source.exists():
        raise ValueError(
            f"no warehouse at {source}: run ingest_job (or `make demo`) first, or pass --landing"
        )
    con.execute(f"ATTACH '{source}' AS live (READ_ONLY)")
    try:
        with transaction(con):
            for spec in KINDS.values():
                con.execute(
                    f"CREATE OR REPLACE TABLE {spec.table} AS SELECT * FROM live.{spec.table}"
                )
    finally:
        con.execute("DETACH live")
    progress(f"copied the raw tables of {source}")


def backtest_into(
    out: Path,
    source: Path,
    landing: Path | None,
    summary_registry: Registry,
    settings: Settings,
    plan: BacktestPlan,
    progress: Progress = print,
) -> tuple[BacktestSummary, str]:
    """The whole backtest, for the CLI and the Dagster asset alike: its own warehouse and
    replay registries in ``out`` (one ingest, or a copy of ``source``'s raw tables), the replay,
    the plot, and the summary logged to MLflow (``summary_registry``'s backtest experiment).
    Returns the summary and the MLflow run id."""
    out.mkdir(parents=True, exist_ok=True)
    con = connect(out / "warehouse.duckdb", lock_timeout=5.0)
    try:
        prepare_warehouse(con, source, landing, progress)
        summary = run_backtest(con, out / "models", settings, plan, progress)
    finally:
        con.close()
    accuracy_plot(summary, out / f"backtest_{summary.backtest_id}.png")
    return summary, log_summary(summary_registry, summary, plan.start, plan.end, plan.every)
