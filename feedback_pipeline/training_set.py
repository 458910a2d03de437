"""The blended, time-split training set (DESIGN section 6), built in DuckDB SQL.

Feedback-labeled predictions weigh ``outcome_weight x strength``; baseline examples weigh 1.0.
Splits are time-ordered: ``train`` < ``validation`` < ``holdout``. The holdout is the most recent
``holdout_fraction`` of *matured* outcome/explicit rows only (predictions at least
``maturity_days`` old, so their outcomes had time to arrive; never weak labels) and is scored
unweighted; rows as recent as the holdout's start are left out of train/validation (no leakage).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.labeling import LABELED_OUTCOMES
from feedback_pipeline.settings import TrainingSettings

TRAINING_SET = "training.training_set"
TRAINING_SET_INFO = "training.training_set_info"
META_COLUMNS = ("row_id", "source", "label", "weight", "event_time", "labeled_at", "split")
HOLDOUT_SOURCES = ("outcome", "explicit")
FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\- ]{0,63}$")


@dataclass(frozen=True)
class TrainingSetSummary:
    as_of: datetime
    window_start: datetime
    features: list[str]
    rows: int
    content_hash: str
    data_watermark: datetime | None  # latest labeled_at of a feedback row used
    counts: pd.DataFrame  # rows per source and split with the positive rate


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
                UNION ALL SELECT features FROM raw.baseline_examples
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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    training: TrainingSettings,
    features: list[str],
    as_of: datetime,
) -> TrainingSetSummary:
    """(Re)build ``training.training_set`` and its one-row info table as of ``as_of``."""
    window_start = as_of - timedelta(days=training.lookback_days)
    structure = json.dumps({name: "DOUBLE" for name in features})
    feature_columns = ", ".join(f"f.{_quote(n)} AS {_quote(n)}" for n in features)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {TRAINING_SET} AS
        WITH feedback_rows AS (
            SELECT prediction_id AS row_id, label_source AS source, label,
                   $outcome_weight * strength AS weight, predicted_at AS event_time,
                   labeled_at, json_transform(features, '{structure}') AS f
            FROM {LABELED_OUTCOMES}
            WHERE labeled_at <= $as_of AND predicted_at <= $as_of
              AND predicted_at > $window_start
        ), baseline_rows AS (
            SELECT example_id AS row_id, 'baseline' AS source, label, 1.0 AS weight,
                   as_of AS event_time, as_of AS labeled_at,
                   json_transform(features, '{structure}') AS f
            FROM raw.baseline_examples
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
              AND (c.source = 'baseline' OR $use_outcomes)
        ), assigned AS (
            SELECT * EXCLUDE (position, total),
                   CASE WHEN position > total - round(total * $validation_fraction)
                        THEN 'validation' ELSE 'train' END AS split
            FROM fit_rows
            UNION ALL
            SELECT c.*, 'holdout' AS split FROM candidates c JOIN holdout USING (row_id)
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
            "matured_before": as_of - timedelta(days=training.maturity_days),
        },
    )
    rows, content_hash, watermark = con.execute(
        f"""
        SELECT count(*),
               -- order-free: XOR of per-row hashes (row ids are unique); 30x cheaper than md5
               format('{{:016x}}', coalesce(bit_xor(hash(t)), 0)),
               max(labeled_at) FILTER (WHERE source <> 'baseline' AND split <> 'holdout')
        FROM {TRAINING_SET} t
        """
    ).fetchall()[0]
    counts = con.execute(
        f"""
        SELECT split, source, count(*) AS rows, round(avg(label), 3) AS positive_rate,
               round(sum(weight), 1) AS total_weight
        FROM {TRAINING_SET} GROUP BY split, source
        ORDER BY list_position(['train', 'validation', 'holdout'], split), source
        """
    ).df()
    summary = TrainingSetSummary(
        as_of, window_start, features, int(rows), content_hash, watermark, counts
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {TRAINING_SET_INFO} AS
        SELECT ?::TIMESTAMP AS as_of, ?::TIMESTAMP AS window_start, ?::VARCHAR[] AS features,
               ?::BIGINT AS rows, ?::VARCHAR AS content_hash, ?::TIMESTAMP AS data_watermark,
               ?::JSON AS settings
        """,
        [as_of, window_start, features, rows, content_hash, watermark, training.model_dump_json()],
    )
    return summary


@dataclass(frozen=True)
class Split:
    X: pd.DataFrame
    y: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_split(con: duckdb.DuckDBPyConnection, split: str, features: list[str]) -> Split:
    """One split as float64 features (NULL -> NaN), labels and weights, in time order."""
    columns = ", ".join(_quote(n) for n in features)
    arrays = con.execute(
        f"SELECT label, weight, {columns} FROM {TRAINING_SET} WHERE split = ? "
        "ORDER BY event_time, row_id",
        [split],
    ).fetchnumpy()  # straight to numpy: no intermediate DataFrame to copy
    return Split(
        X=pd.DataFrame({n: np.ma.filled(arrays[n].astype(np.float64), np.nan) for n in features}),
        y=np.asarray(arrays["label"], dtype=np.int64),
        weight=np.asarray(arrays["weight"], dtype=np.float64),
    )


def load_info(con: duckdb.DuckDBPyConnection) -> dict:
    frame = con.execute(f"SELECT * FROM {TRAINING_SET_INFO}").df()
    if frame.empty:
        raise TrainingSetError("no training set yet: materialize training_set first")
    info = frame.iloc[0].to_dict()
    info["features"] = list(info["features"])
    info["settings"] = json.loads(info["settings"])
    return info
