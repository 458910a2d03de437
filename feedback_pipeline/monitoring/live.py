"""Live performance of served predictions and the health of the server.

Both are set-based DuckDB SQL: matured labels of recent predictions per week and the
``model_version`` that served them; the server's request log (``DATA/serving/requests-*.jsonl``,
one line per request) per day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES

# Per week and serving model version: the served decision (confidence >= 0.5) against matured
# labels, and the expected calibration error of the served confidence (10 equal-width bins).
LIVE_PERFORMANCE_SQL = f"""
WITH rows AS (
    SELECT date_trunc('week', predicted_at)::DATE AS week,
           coalesce(model_version, '(none)') AS model_version,
           confidence, label, least(floor(confidence * 10), 9) AS bin
    FROM {LABELED_OUTCOMES}
    WHERE predicted_at > $since AND predicted_at <= $as_of AND labeled_at <= $as_of
), bins AS (
    SELECT week, model_version, abs(sum(label) - sum(confidence)) AS gap
    FROM rows GROUP BY week, model_version, bin
), calibration AS (
    SELECT week, model_version, sum(gap) AS gap FROM bins GROUP BY ALL
)
SELECT week, model_version, count(*) AS labeled,
       avg(((confidence >= 0.5)::INTEGER = label)::DOUBLE) AS accuracy,
       sum(((confidence >= 0.5) AND label = 0)::INTEGER)
           / nullif(sum((label = 0)::INTEGER), 0) AS fp_rate,
       avg(label::DOUBLE) AS good_rate,
       any_value(c.gap) / count(*) AS calibration_error
FROM rows JOIN calibration c USING (week, model_version)
GROUP BY ALL ORDER BY week, model_version
"""


def live_performance(con: duckdb.DuckDBPyConnection, as_of: datetime, days: int) -> pd.DataFrame:
    """Accuracy, FP rate and calibration error per week and serving model version."""
    return con.execute(
        LIVE_PERFORMANCE_SQL, {"as_of": as_of, "since": as_of - timedelta(days=days)}
    ).df()


REQUEST_LOG_GLOB = "requests-*.jsonl"
REQUEST_LOG_COLUMNS = (
    "{'at': 'TIMESTAMP', 'latency_ms': 'DOUBLE', 'rows': 'BIGINT', 'fallbacks': 'BIGINT', "
    "'status': 'INTEGER', 'model_version': 'VARCHAR', 'policy_version': 'INTEGER'}"
)


@dataclass(frozen=True)
class ServingHealth:
    daily: pd.DataFrame  # day, requests, rows, errors, mean / p50 / p99 latency, fallback rate
    requests: int
    mean_latency_ms: float
    p99_latency_ms: float
    fallback_rate: float
    error_rate: float


def serving_health(log_dir: Path, as_of: datetime, days: int) -> ServingHealth:
    """What the server logged in the last ``days``: latency, fallbacks and errors per day."""
    files = sorted(log_dir.glob(REQUEST_LOG_GLOB)) if log_dir.is_dir() else []
    if not files:
        return ServingHealth(pd.DataFrame(), 0, float("nan"), float("nan"), float("nan"), 0.0)
    con = duckdb.connect()
    try:
        con.execute(
            f"""CREATE TEMP TABLE served AS
                SELECT * FROM read_json($files, format = 'newline_delimited',
                                        columns = {REQUEST_LOG_COLUMNS})
                WHERE "at" > $since AND "at" <= $as_of""",
            {
                "files": [str(f) for f in files],
                "since": as_of - timedelta(days=days),
                "as_of": as_of,
            },
        )
        daily = con.execute(
            """SELECT "at"::DATE AS day, count(*) AS requests, sum(rows) AS rows,
                      count(*) FILTER (WHERE status >= 400) AS errors,
                      avg(latency_ms) AS mean_latency_ms,
                      quantile_cont(latency_ms, 0.5) AS p50_latency_ms,
                      quantile_cont(latency_ms, 0.99) AS p99_latency_ms,
                      sum(fallbacks) / nullif(sum(rows), 0) AS fallback_rate
               FROM served GROUP BY ALL ORDER BY day"""
        ).df()
        total = con.execute(
            """SELECT count(*), avg(latency_ms), quantile_cont(latency_ms, 0.99),
                      sum(fallbacks) / nullif(sum(rows), 0),
                      count(*) FILTER (WHERE status >= 400) / nullif(count(*), 0)
               FROM served"""
        ).fetchone()
    finally:
        con.close()
    requests, mean, p99, fallback_rate, error_rate = total
    nan = float("nan")
    return ServingHealth(
        daily,
        int(requests),
        float(mean) if mean is not None else nan,
        float(p99) if p99 is not None else nan,
        float(fallback_rate) if fallback_rate is not None else nan,
        float(error_rate or 0.0),
    )
