"""Turn feedback events into one label per prediction, point in time.

The policy is data (``LabelingSettings.policy``): each signal (a trade outcome or a human event
type) maps to a label, a strength and a source. Resolution per prediction:

* any outcome event decides (outcomes override every human signal); the latest outcome wins;
* otherwise the latest human signal wins; on equal timestamps ``undo`` beats ``reject`` beats
  ``modify`` beats ``export`` beats ``accept``, so an undo always beats the accept it retracts;
* a signal whose policy label is null (e.g. ``breakeven`` when excluded) is ignored;
* only events with ``occurred_at <= as_of`` and predictions with ``predicted_at <= as_of`` count,
  and only the configured environments (feedback without one inherits its prediction's).
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pyarrow as pa

from feedback_pipeline.settings import LabelingSettings
from feedback_pipeline.vocabulary import HUMAN_PRECEDENCE, POLICY_SIGNALS
from feedback_pipeline.warehouse.connection import table_exists, transaction
from feedback_pipeline.warehouse.tables import (
    LABELED_OUTCOMES,
    LABELED_OUTCOMES_INFO,
    RAW_FEEDBACK_EVENTS,
    RAW_PREDICTIONS,
)


def policy_table(labeling: LabelingSettings) -> pa.Table:
    """The label policy as a relation: signal, label, strength, source, precedence."""
    signals = list(POLICY_SIGNALS)
    rules = [labeling.policy.rule(s) for s in signals]
    precedence = [HUMAN_PRECEDENCE.index(s) + 1 if s in HUMAN_PRECEDENCE else 0 for s in signals]
    return pa.table(
        {
            "signal": signals,
            "label": pa.array([r.label for r in rules], pa.int32()),
            "strength": [float(r.strength) for r in rules],
            "label_source": [r.source for r in rules],
            "precedence": precedence,
        }
    )


# Which event decides, as one sortable text per event (the largest wins): outcomes first, then
# the latest, then the precedence on equal timestamps, then the event id (from character 23 on).
# One text key lets DuckDB pick the winner with a plain max() per prediction instead of ranking
# every event, and no wide relation is held twice.
DECIDING_KEY = """
    (pol.label_source = 'outcome')::INTEGER
    -- 21 digits, never negative, for every timestamp DuckDB can hold
    || lpad((epoch_us(f.occurred_at)::HUGEINT * 16 + pol.precedence
             + 100000000000000000000::HUGEINT)::VARCHAR, 21, '0')
    || f.event_id
"""
# A rate event is rate_good, rate_bad or rate_neutral by the settings' rating thresholds.
SIGNAL = """CASE f.event_type WHEN 'outcome' THEN f.outcome
    WHEN 'rate' THEN CASE WHEN f.rating >= $rating_good_min THEN 'rate_good'
                          WHEN f.rating <= $rating_bad_max THEN 'rate_bad'
                          ELSE 'rate_neutral' END
    ELSE f.event_type END"""

# One label per prediction: a SELECT, so the labels table and the analytics (every environment)
# share it.
LABELS_QUERY = f"""
WITH eligible_predictions AS (
    SELECT prediction_id, environment FROM {RAW_PREDICTIONS}
    WHERE predicted_at <= $as_of AND list_contains($environments, environment)
), ranked AS (
    SELECT f.prediction_id, pol.label, {DECIDING_KEY} AS deciding_key
    FROM {RAW_FEEDBACK_EVENTS} f
    JOIN eligible_predictions p USING (prediction_id)
    LEFT JOIN label_policy pol ON pol.signal = {SIGNAL}
    WHERE f.occurred_at <= $as_of
      AND list_contains($environments, coalesce(f.environment, p.environment))
), deciding AS (
    SELECT prediction_id, count(*) AS feedback_events,
           max(deciding_key) FILTER (WHERE label IS NOT NULL)[23:] AS event_id
    FROM ranked GROUP BY prediction_id
)
SELECT p.prediction_id, p.entity_id, p.predicted_at, p.environment, p.model_version,
       p.confidence, p.rule_confidence, p.ml_enhanced, p.variant, p.features,
       pol.label::INTEGER AS label, pol.label_source, pol.strength, f.occurred_at AS labeled_at,
       pol.signal AS deciding_signal, f.event_id AS deciding_event_id, f.return_pct,
       d.feedback_events
FROM deciding d
JOIN {RAW_FEEDBACK_EVENTS} f USING (event_id)  -- no deciding event (NULL id): no label
JOIN label_policy pol ON pol.signal = {SIGNAL}
JOIN {RAW_PREDICTIONS} p ON p.prediction_id = d.prediction_id
"""


def write_labels(
    con: duckdb.DuckDBPyConnection,
    table: str,
    labeling: LabelingSettings,
    as_of: datetime,
    temporary: bool = False,
) -> None:
    """Create or replace ``table`` with one label per prediction as of ``as_of`` under
    ``labeling`` (the labels table; the analytics' all-environment labels as a temp table)."""
    con.register("label_policy", policy_table(labeling))
    try:
        con.execute(
            f"CREATE OR REPLACE {'TEMP ' if temporary else ''}TABLE {table} AS {LABELS_QUERY}",
            {
                "as_of": as_of,
                "environments": list(labeling.environments),
                "rating_good_min": labeling.rating_good_min,
                "rating_bad_max": labeling.rating_bad_max,
            },
        )
    finally:
        con.unregister("label_policy")


def build_labeled_outcomes(
    con: duckdb.DuckDBPyConnection, labeling: LabelingSettings, as_of: datetime
) -> int:
    """(Re)build ``labeled.labeled_outcomes`` as of ``as_of`` (naive UTC); returns its row count.

    A full rebuild from the raw tables, so it is idempotent and late predictions (orphan
    feedback) are matched as soon as they land.
    """
    with transaction(con):
        write_labels(con, LABELED_OUTCOMES, labeling, as_of)
        rows = con.execute(f"SELECT count(*) FROM {LABELED_OUTCOMES}").fetchall()[0][0]
        con.execute(
            f"""
            CREATE OR REPLACE TABLE {LABELED_OUTCOMES_INFO} AS
            SELECT ?::TIMESTAMP AS as_of, ?::BIGINT AS rows, ?::JSON AS labeling,
                   now()::TIMESTAMP AS built_at
            """,
            [as_of, rows, labeling.model_dump_json()],
        )
    return rows


def labels_as_of(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The ``as_of`` the current ``labeled.labeled_outcomes`` was built for; None if never."""
    if not table_exists(con, LABELED_OUTCOMES_INFO):
        return None
    rows = con.execute(f"SELECT as_of FROM {LABELED_OUTCOMES_INFO}").fetchall()
    return rows[0][0] if rows else None


def orphan_feedback_count(con: duckdb.DuckDBPyConnection) -> int:
    """Feedback events whose prediction has not landed yet (kept, matched later)."""
    return con.execute(
        f"""
        SELECT count(*) FROM {RAW_FEEDBACK_EVENTS} f
        WHERE NOT EXISTS (SELECT 1 FROM {RAW_PREDICTIONS} p WHERE p.prediction_id = f.prediction_id)
        """
    ).fetchall()[0][0]


def label_problems(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Counts of what must never be in the labels: null or non-binary labels, non-positive
    strengths, a prediction labeled twice."""
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE label IS NULL) AS null_labels,
               count(*) FILTER (WHERE label NOT IN (0, 1)) AS labels_not_binary,
               count(*) FILTER (WHERE strength IS NULL OR strength <= 0) AS bad_strengths,
               count(*) - count(DISTINCT prediction_id) AS repeated_predictions
        FROM {LABELED_OUTCOMES}
        """
    ).fetchall()[0]
    names = ("null_labels", "labels_not_binary", "bad_strengths", "repeated_predictions")
    return {name: int(value) for name, value in zip(names, row, strict=True)}
