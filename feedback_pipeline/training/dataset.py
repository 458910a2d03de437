"""The blended, time-split training set, built in DuckDB SQL.

Feedback-labeled predictions weigh ``outcome_weight x strength``; baseline examples weigh 1.0.
Splits are time-ordered: ``train`` < ``validation`` < ``holdout``. The holdout is the most recent
``holdout_fraction`` of *matured* outcome/explicit rows only (predictions at least
``maturity_days`` old, so their outcomes had time to arrive; never weak labels) and is scored
unweighted; rows as recent as the holdout's start are left out of train/validation (no leakage).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from feedback_pipeline.labels.outcomes import labels_as_of
from feedback_pipeline.settings import TrainingSettings
from feedback_pipeline.vocabulary import BASELINE_SOURCE, HOLDOUT_SOURCES
from feedback_pipeline.warehouse.connection import table_exists, transaction
from feedback_pipeline.warehouse.tables import (
    LABELED_OUTCOMES,
    RAW_BASELINE_EXAMPLES,
    TRAINING_SET,
    TRAINING_SET_INFO,
)

META_COLUMNS = (
    "row_id",
    "source",
    "label",
    "weight",
    "event_time",
    "labeled_at",
    "split",
)
# Sets kept in the warehouse, newest first: a run reads the one it built, by hash, so a set
# is dropped only after this many newer builds (runs queue in one pool: that is many runs).
KEEP_TRAINING_SETS = 4
FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\- ]{0,63}$")


@dataclass(frozen=True)
class TrainingSetInfo:
    """What ``training.training_set_info`` records about the current training set."""

    as_of: datetime
    window_start: datetime
    features: list[str]
    rows: int
    content_hash: str
    data_watermark: datetime | None  # latest labeled_at of a train/validation feedback row
    settings: dict[str, Any]  # the TrainingSettings it was built with
    data_clock: datetime  # the newest label visible as of as_of
    maturity_days: float  # a row's label is final once its prediction is this old


@dataclass(frozen=True)
class LabelMaturity:
    data_clock: datetime
    horizon_days: float
    delay_days: dict[str, float]  # observed delay quantile per label source
    derived: bool  # False when training.maturity_days overrides it


def label_maturity(
    con: duckdb.DuckDBPyConnection,
    training: TrainingSettings,
    as_of: datetime,
    window_start: datetime,
) -> LabelMaturity:
    """How long until a row's label is final, from the label delays observed in the window.

    The horizon is the delay quantile of the slowest label source (an outcome can still override
    a human signal until it lands), so a stream whose outcomes come 30 minutes later waits 30
    minutes, not 10 days. ``training.maturity_days`` overrides it. The clock is the data's own:
    the newest label visible as of ``as_of``."""
    rows = con.execute(
        f"""
        SELECT label_source,
               quantile_cont(epoch(labeled_at) - epoch(predicted_at), $q) / 86400.0,
               max(labeled_at)
        FROM {LABELED_OUTCOMES}
        WHERE labeled_at <= $as_of AND predicted_at <= $as_of AND predicted_at > $window_start
        GROUP BY label_source ORDER BY label_source
        """,
        {"q": training.maturity_quantile, "as_of": as_of, "window_start": window_start},
    ).fetchall()
    delays = {source: max(float(delay), 0.0) for source, delay, _ in rows}
    clock = max((latest for _, _, latest in rows), default=None) or as_of
    if training.maturity_days is not None:
        return LabelMaturity(min(clock, as_of), training.maturity_days, delays, False)
    return LabelMaturity(min(clock, as_of), max(delays.values(), default=0.0), delays, True)


@dataclass(frozen=True)
class TrainingSetSummary:
    info: TrainingSetInfo
    counts: pd.DataFrame  # rows per source and split with the positive rate
    quarantined: tuple[datetime, ...] = ()  # weeks whose feedback was left out


class TrainingSetError(ValueError):
    pass


def discover_features(con: duckdb.DuckDBPyConnection, configured: list[str] | None) -> list[str]:
    """The configured feature list, else the numeric features present in the data."""
    if configured:
        names = list(configured)
    else:
        rows = con.execute(
            f"""
            SELECT DISTINCT unnest(json_keys(features)) AS name FROM (
                SELECT features FROM {LABELED_OUTCOMES}
                UNION ALL SELECT features FROM {RAW_BASELINE_EXAMPLES}
            ) USING SAMPLE reservoir(20000 ROWS) REPEATABLE (7)
            ORDER BY name
            """
        ).fetchall()
        names = [name for (name,) in rows]
    bad = [n for n in names if not FEATURE_NAME.match(n) or n in META_COLUMNS]
    if bad:
        raise TrainingSetError(f"features: unusable feature names {bad}")
    if not names:
        raise TrainingSetError("features: no features found in the data")
    return names


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    training: TrainingSettings,
    features: list[str],
    as_of: datetime,
    quarantined: Sequence[datetime] = (),
) -> TrainingSetSummary:
    """Build the training set as of ``as_of`` into its own table, keyed by its content hash.
    Feedback on predictions of a ``quarantined`` week (Monday 00:00; see
    ``training.quarantine``) is left out.

    Each set is immutable and readers name the one they want (``content_hash``), so two runs
    at once never read each other's set; ``training.training_set`` is a view of the newest, for
    people and the UI. The build, its info row and the pruning of all but the newest
    ``KEEP_TRAINING_SETS`` commit in one transaction: a crash leaves the sets as they were.

    Refuses labels built for another ``as_of`` (the set would silently mix two points in time)
    and fails, naming ``as_of`` and the data's time range, when the window leaves nothing to
    train or validate on.

    Maturity is measured on the data's own clock, the newest label visible as of ``as_of``: a
    stalled feedback feed does not make unlabeled rows look final, and a rerun on unchanged data
    builds the identical set (same content hash) whenever it runs.
    """
    labels_built_as_of = labels_as_of(con)
    if labels_built_as_of != as_of:
        raise TrainingSetError(
            f"labeled_outcomes was built as of {labels_built_as_of} but this training set is as "
            f"of {as_of}: rematerialize labeled_outcomes with the same as_of first (retrain_job "
            "builds both from one run context)"
        )
    window_start = as_of - timedelta(days=training.lookback_days)
    maturity = label_maturity(con, training, as_of, window_start)
    with transaction(con):
        _drop_current_relation(con)
        staging = f"training.training_set_building_{uuid.uuid4().hex[:12]}"
        summary = _build(
            con, staging, training, features, as_of, window_start, maturity, quarantined
        )
        _keep(con, staging, summary.info)
    return summary


def _build(
    con: duckdb.DuckDBPyConnection,
    staging: str,
    training: TrainingSettings,
    features: list[str],
    as_of: datetime,
    window_start: datetime,
    maturity: LabelMaturity,
    quarantined: Sequence[datetime] = (),
) -> TrainingSetSummary:
    """The set's rows into ``staging``, its hash and counts; fails when it cannot train."""
    matured_before = maturity.data_clock - timedelta(days=maturity.horizon_days)
    structure = json.dumps({name: "DOUBLE" for name in features})
    feature_columns = ", ".join(
        f"f.{quote_identifier(n)} AS {quote_identifier(n)}" for n in features
    )
    con.execute(
        f"""
        CREATE TABLE {staging} AS
        WITH feedback_rows AS (
            SELECT prediction_id AS row_id, label_source AS source, label,
                   $outcome_weight * strength AS weight, predicted_at AS event_time,
                   labeled_at, json_transform(features, '{structure}') AS f
            FROM {LABELED_OUTCOMES}
            WHERE labeled_at <= $as_of AND predicted_at <= $as_of
              AND predicted_at > $window_start
              AND NOT list_contains($quarantined, date_trunc('week', predicted_at))
        ), baseline_rows AS (
            SELECT example_id AS row_id, '{BASELINE_SOURCE}' AS source, label, 1.0 AS weight,
                   as_of AS event_time, as_of AS labeled_at,
                   json_transform(features, '{structure}') AS f
            FROM {RAW_BASELINE_EXAMPLES}
            WHERE as_of <= $as_of AND as_of > $window_start
              AND example_id NOT IN (SELECT row_id FROM feedback_rows)
        ), candidates AS (
            SELECT * FROM feedback_rows UNION ALL SELECT * FROM baseline_rows
        ), holdout_ranked AS (
            SELECT row_id,
                   row_number() OVER (ORDER BY event_time, row_id) AS position,
                   count(*) OVER () AS total
            FROM candidates
            WHERE source IN {HOLDOUT_SOURCES} AND event_time <= $matured_before
        ), holdout AS (
            SELECT row_id FROM holdout_ranked
            WHERE position > total - greatest(1, round(total * $holdout_fraction))
        ), holdout_start AS (
            SELECT min(c.event_time) AS t FROM candidates c JOIN holdout USING (row_id)
        ), fit_rows AS (
            SELECT c.*, row_number() OVER (ORDER BY event_time, row_id) AS position,
                   count(*) OVER () AS total
            FROM candidates c, holdout_start h
            WHERE c.row_id NOT IN (SELECT row_id FROM holdout)
              AND (h.t IS NULL OR c.event_time < h.t)
              AND (c.source = '{BASELINE_SOURCE}' OR $use_outcomes)
        ), refit_rows AS (
            -- Rows as recent as the holdout that only the promoted refit learns from: those
            -- whose label is final (an outcome, a weak label, or a matured row). A recent row
            -- with only a fast human label so far is left out, so the refit's label mix is
            -- not tilted towards fast labels (rejects) before the slow outcomes land.
            SELECT c.*, 'refit_only' AS split FROM candidates c, holdout_start h
            WHERE h.t IS NOT NULL AND c.event_time >= h.t
              AND c.row_id NOT IN (SELECT row_id FROM holdout)
              AND (c.source IN ('outcome', '{BASELINE_SOURCE}') OR c.event_time <= $matured_before)
              AND (c.source = '{BASELINE_SOURCE}' OR $use_outcomes)
        ), assigned AS (
            SELECT * EXCLUDE (position, total),
                   CASE WHEN position > total - round(total * $validation_fraction)
                        THEN 'validation' ELSE 'train' END AS split
            FROM fit_rows
            UNION ALL
            SELECT c.*, 'holdout' AS split FROM candidates c JOIN holdout USING (row_id)
            UNION ALL
            SELECT * FROM refit_rows
        )
        SELECT row_id, source, label::INTEGER AS label, weight::DOUBLE AS weight,
               event_time, labeled_at, split, {feature_columns}
        FROM assigned
        ORDER BY event_time, row_id
        """,
        {
            "as_of": as_of,
            "window_start": window_start,
            "outcome_weight": training.outcome_weight,
            "use_outcomes": training.use_outcomes,
            "holdout_fraction": training.holdout_fraction,
            "validation_fraction": training.validation_fraction,
            "matured_before": matured_before,
            "quarantined": [datetime.combine(w.date(), datetime.min.time()) for w in quarantined],
        },
    )
    rows, content_hash, watermark = con.execute(
        f"""
        SELECT count(*),
               -- order-free: XOR of per-row hashes (row ids are unique); 30x cheaper than md5
               format('{{:016x}}', coalesce(bit_xor(hash(t)), 0)),
               max(labeled_at) FILTER (
                   WHERE source <> '{BASELINE_SOURCE}' AND split IN ('train', 'validation'))
        FROM {staging} t
        """
    ).fetchall()[0]
    counts = _split_counts(con, staging)
    by_split = counts.groupby("split")["rows"].sum()
    if not by_split.get("train", 0) or not by_split.get("validation", 0):
        raise TrainingSetError(
            f"training set empty for as_of {as_of}: {by_split.get('train', 0)} train and "
            f"{by_split.get('validation', 0)} validation rows in the window {window_start} .. "
            f"{as_of} ({training.lookback_days} lookback days); the data spans "
            f"{data_time_range(con)}. Set as_of inside the data's range or widen "
            "training.lookback_days."
        )
    info = TrainingSetInfo(
        as_of,
        window_start,
        features,
        int(rows),
        content_hash,
        watermark,
        training.model_dump(),
        maturity.data_clock,
        maturity.horizon_days,
    )
    return TrainingSetSummary(info, counts, tuple(quarantined))


INFO_COLUMNS = (
    "as_of, window_start, features, rows, content_hash, data_watermark, settings, data_clock, "
    "maturity_days"
)


def _drop_current_relation(con: duckdb.DuckDBPyConnection) -> None:
    """``training.training_set`` as it is (an older warehouse's table, or the view)."""
    kind = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_schema = 'training' AND table_name = 'training_set'"
    ).fetchall()
    if kind:
        con.execute(f"DROP {'VIEW' if kind[0][0] == 'VIEW' else 'TABLE'} {TRAINING_SET}")


def _keep(con: duckdb.DuckDBPyConnection, staging: str, info: TrainingSetInfo) -> None:
    """Store the staged set under its hash (an identical one may be there already), record
    it, point the ``training.training_set`` view at it and drop the oldest sets."""
    table = training_set_table(info.content_hash)
    if table_exists(con, table):  # the same content: keep the stored copy
        con.execute(f"DROP TABLE {staging}")
    else:
        con.execute(f"ALTER TABLE {staging} RENAME TO {table.split('.')[1]}")
    con.execute(f"DELETE FROM {TRAINING_SET_INFO} WHERE content_hash = ?", [info.content_hash])
    con.execute(
        f"INSERT INTO {TRAINING_SET_INFO} ({INFO_COLUMNS}, built_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
        [
            info.as_of,
            info.window_start,
            info.features,
            info.rows,
            info.content_hash,
            info.data_watermark,
            json.dumps(info.settings, default=str),
            info.data_clock,
            info.maturity_days,
        ],
    )
    con.execute(f"CREATE VIEW {TRAINING_SET} AS SELECT * FROM {table}")
    stale = con.execute(
        f"SELECT content_hash FROM {TRAINING_SET_INFO} ORDER BY built_at DESC OFFSET ?",
        [KEEP_TRAINING_SETS],
    ).fetchall()
    for (old_hash,) in stale:
        con.execute(f"DROP TABLE IF EXISTS {training_set_table(old_hash)}")
    con.execute(
        f"DELETE FROM {TRAINING_SET_INFO} WHERE list_contains(?, content_hash)",
        [[h for (h,) in stale]],
    )


def training_set_table(content_hash: str | None) -> str:
    """The table that holds the set with this hash; None: the view of the newest set."""
    if content_hash is None:
        return TRAINING_SET
    if not re.fullmatch(r"[0-9a-f]{16}", content_hash):
        raise TrainingSetError(f"training set hash {content_hash!r} is not 16 hex digits")
    return f"training.training_set_{content_hash}"


def split_counts(con: duckdb.DuckDBPyConnection, content_hash: str | None = None) -> pd.DataFrame:
    """Rows, positive rate and total weight per split and source."""
    return _split_counts(con, training_set_table(content_hash))


def _split_counts(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    return con.execute(
        f"""
        SELECT split, source, count(*) AS rows, round(avg(label), 3) AS positive_rate,
               round(sum(weight), 1) AS total_weight
        FROM {table} GROUP BY split, source
        ORDER BY list_position(['train', 'validation', 'holdout', 'refit_only'], split), source
        """
    ).df()


def data_time_range(con: duckdb.DuckDBPyConnection) -> str:
    """The time range of labeled predictions and baseline examples, for error messages."""
    low, high = con.execute(
        f"""
        SELECT min(t), max(t) FROM (
            SELECT predicted_at AS t FROM {LABELED_OUTCOMES}
            UNION ALL SELECT as_of FROM {RAW_BASELINE_EXAMPLES})
        """
    ).fetchall()[0]
    return f"{low} .. {high}" if low is not None else "nothing (no labels and no baseline rows)"


@dataclass(frozen=True)
class TrainingSetVerdict:
    problems: list[str]  # what makes the set unusable for training; empty when usable
    holdout_rule: str  # whether the gate can judge on this holdout, or which rule refuses
    counts: dict[str, int]


def training_set_problems(
    con: duckdb.DuckDBPyConnection, min_holdout_rows: int, content_hash: str | None = None
) -> TrainingSetVerdict:
    """Both classes in train and validation not empty; the holdout's size against the gate."""
    train_rows, train_positive, validation_rows, holdout_rows = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE split = 'train'),
               count(*) FILTER (WHERE split = 'train' AND label = 1),
               count(*) FILTER (WHERE split = 'validation'),
               count(*) FILTER (WHERE split = 'holdout')
        FROM {training_set_table(content_hash)}
        """
    ).fetchall()[0]
    problems = []
    if train_positive in (0, train_rows):
        problems.append(
            f"train has a single class ({train_positive} positive of {train_rows} rows): "
            "nothing to learn; widen training.lookback_days or wait for more labels"
        )
    if validation_rows == 0:
        problems.append("validation is empty: challengers cannot be chosen")
    if holdout_rows >= min_holdout_rows:
        rule = f"holdout has {holdout_rows} rows (>= min_holdout_rows={min_holdout_rows})"
    else:
        rule = (
            f"holdout has {holdout_rows} rows, fewer than gate.min_holdout_rows="
            f"{min_holdout_rows}: the gate will refuse to promote (with or without a champion)"
        )
    counts = {
        "train_rows": train_rows,
        "train_positive": train_positive,
        "validation_rows": validation_rows,
        "holdout_rows": holdout_rows,
    }
    return TrainingSetVerdict(problems, rule, counts)


def load_info(con: duckdb.DuckDBPyConnection, content_hash: str | None = None) -> TrainingSetInfo:
    """The set ``content_hash`` (what a run built and hands on), or the newest one."""
    rows = (
        con.execute(
            f"SELECT {INFO_COLUMNS} FROM {TRAINING_SET_INFO} "
            "WHERE $hash IS NULL OR content_hash = $hash ORDER BY built_at DESC LIMIT 1",
            {"hash": content_hash},
        ).fetchall()
        if table_exists(con, TRAINING_SET_INFO)
        else []
    )
    if not rows and content_hash is not None:
        raise TrainingSetError(
            f"training set {content_hash} is not in the warehouse: only the newest "
            f"{KEEP_TRAINING_SETS} sets are kept, and newer runs have built that many since. "
            "Rematerialize training_set (or rerun the job)"
        )
    if not rows:
        raise TrainingSetError("no training set yet: materialize training_set first")
    as_of, window_start, features, count, digest, watermark, settings, clock, days = rows[0]
    return TrainingSetInfo(
        as_of,
        window_start,
        list(features),
        count,
        digest,
        watermark,
        json.loads(settings),
        clock,
        days,
    )
