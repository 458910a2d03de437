"""What the feedback says, per week, environment, model version and variant.

Everything is set-based DuckDB SQL over one relation, ``prediction_feedback``: one row per
prediction with its final human signal, its label (the label policy, every environment), its
trade outcome and its rating. The A/B comparison reads the same relation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.labels.outcomes import write_labels
from feedback_pipeline.settings import AnalyticsSettings, LabelingSettings
from feedback_pipeline.vocabulary import ENVIRONMENTS, HUMAN_PRECEDENCE
from feedback_pipeline.warehouse import summaries
from feedback_pipeline.warehouse.tables import RAW_FEEDBACK_EVENTS, RAW_PREDICTIONS

PREDICTION_FEEDBACK = "prediction_feedback"  # a temp table, per connection
HUMAN_TYPES = ("accept", "export", "modify", "reject", "undo")

# Per prediction: the last human signal (on equal timestamps, the label policy's precedence:
# an undo beats the accept it retracts), the last outcome and the last rating.
PREDICTION_FEEDBACK_SQL = f"""
CREATE OR REPLACE TEMP TABLE {PREDICTION_FEEDBACK} AS
WITH predictions AS (
    SELECT prediction_id, predicted_at, date_trunc('week', predicted_at)::DATE AS week,
           environment, coalesce(model_version, '(none)') AS model_version,
           coalesce(variant, '(none)') AS variant, entity_id, ml_enhanced
    FROM {RAW_PREDICTIONS}
    WHERE predicted_at > $since AND predicted_at <= $as_of
), events AS (
    SELECT f.* FROM {RAW_FEEDBACK_EVENTS} f SEMI JOIN predictions USING (prediction_id)
    WHERE f.occurred_at <= $as_of
), human AS (
    SELECT prediction_id,
           arg_max(event_type, (occurred_at, list_position($precedence, event_type), event_id))
               AS final_human,
           arg_max(source, occurred_at) AS source
    FROM events WHERE list_contains($human_types, event_type) GROUP BY prediction_id
), outcomes AS (
    SELECT prediction_id, arg_max(outcome, (occurred_at, event_id)) AS outcome,
           arg_max(return_pct, (occurred_at, event_id)) AS return_pct
    FROM events WHERE event_type = 'outcome' GROUP BY prediction_id
), ratings AS (
    SELECT prediction_id, arg_max(rating, (occurred_at, event_id)) AS rating
    FROM events WHERE event_type = 'rate' GROUP BY prediction_id
)
SELECT p.*, h.final_human, h.source,
       CASE WHEN h.final_human IS NOT NULL
            THEN (h.final_human IN ('accept', 'export'))::INTEGER END AS accepted,
       l.label, o.outcome,
       CASE WHEN o.outcome IS NOT NULL THEN (o.outcome = 'win')::INTEGER END AS won,
       o.return_pct, r.rating
FROM predictions p
LEFT JOIN human h USING (prediction_id)
LEFT JOIN outcomes o USING (prediction_id)
LEFT JOIN ratings r USING (prediction_id)
LEFT JOIN stats_labels l USING (prediction_id)
"""

WEEKLY_GROUPS = ("environment", "model_version", "variant")  # a week's rows, by default

WEEKLY_SQL = f"""
SELECT week, {{groups}}
       count(*) AS predictions,
       count(final_human) AS human_feedback,
       avg(accepted) AS accept_rate,
       avg((final_human = 'reject')::INTEGER) AS reject_rate,
       avg((final_human = 'undo')::INTEGER) AS undo_rate,
       avg((final_human = 'modify')::INTEGER) AS modify_rate,
       count(label) AS labeled,
       avg(1 - label) AS fp_rate,
       count(outcome) AS outcomes,
       avg(won) AS win_rate,
       avg(return_pct) AS mean_return,
       count(rating) AS ratings,
       avg(rating) AS mean_rating
FROM {PREDICTION_FEEDBACK}
GROUP BY ALL ORDER BY ALL
"""


def weekly_sql(by: tuple[str, ...]) -> str:
    """The weekly figures per week and ``by`` (any of WEEKLY_GROUPS, none for one row a week)."""
    unknown = sorted(set(by) - set(WEEKLY_GROUPS))
    if unknown:
        raise ValueError(f"--by {', '.join(unknown)}: choose from {', '.join(WEEKLY_GROUPS)}")
    return WEEKLY_SQL.format(groups="".join(f"{name}, " for name in by))


FP_TREND_SQL = f"""
SELECT week, environment, count(label) AS labeled, sum(1 - label) AS false_positives
FROM {PREDICTION_FEEDBACK} GROUP BY ALL ORDER BY ALL
"""

# Note terms (words and word pairs) of the notes on labeled predictions, counted once per note.
NOTE_TERMS_SQL = f"""
WITH notes AS (
    SELECT f.event_id, l.label,
           list_filter(regexp_split_to_array(lower(f.notes), '[^a-z]+'),
                       lambda t: length(t) >= 3 AND NOT list_contains($stop_words, t)) AS words
    FROM {RAW_FEEDBACK_EVENTS} f JOIN {PREDICTION_FEEDBACK} l USING (prediction_id)
    WHERE f.notes IS NOT NULL AND f.occurred_at <= $as_of AND l.label IS NOT NULL
), terms AS (
    SELECT DISTINCT event_id, label, unnest(list_concat(
        words, list_transform(range(1, len(words)), lambda i: words[i] || ' ' || words[i + 1])
    )) AS term
    FROM notes
), totals AS (
    SELECT count(DISTINCT event_id) FILTER (WHERE label = 1) AS good_notes,
           count(DISTINCT event_id) FILTER (WHERE label = 0) AS bad_notes
    FROM notes
)
SELECT term, count(*) FILTER (WHERE label = 1) AS good, count(*) FILTER (WHERE label = 0) AS bad,
       -- smoothed log-odds of the term in good vs bad notes
       ln((good + 0.5) / (any_value(t.good_notes) + 1))
         - ln((bad + 0.5) / (any_value(t.bad_notes) + 1)) AS log_odds
FROM terms, totals t
GROUP BY term HAVING count(*) >= $min_count
"""


@dataclass(frozen=True)
class FeedbackStats:
    """The analytics of one look at the feedback, from ``since`` to ``as_of``."""

    since: datetime
    as_of: datetime
    weekly: pd.DataFrame
    fp_trend: pd.DataFrame  # week, environment, labeled, false_positives, fp_rate, Wilson bounds
    segments: pd.DataFrame  # field, value, labeled, good, effectiveness, Wilson bounds
    note_terms: pd.DataFrame  # side (good/bad), term, good, bad, log_odds

    @property
    def predictions(self) -> int:
        return int(self.weekly["predictions"].sum()) if len(self.weekly) else 0

    def as_dict(self) -> dict:
        """JSON-ready: tables as lists of records (missing values as null, dates ISO-8601)."""
        tables = {
            name: json.loads(getattr(self, name).to_json(orient="records", date_format="iso"))
            for name in ("weekly", "fp_trend", "segments", "note_terms")
        }
        return {"since": self.since.isoformat(), "as_of": self.as_of.isoformat(), **tables}

    def markdown(self) -> str:
        """For people: the window, then each table (what ``feedback-pipeline stats`` prints)."""
        window = f"{self.since:%Y-%m-%d %H:%M} to {self.as_of:%Y-%m-%d %H:%M}"
        sections = [f"Feedback from {window} UTC\n"]
        for title, frame in (
            ("Weekly", self.weekly),
            ("FP rate per week and environment (Wilson interval)", self.fp_trend),
            ("Effectiveness (good-label rate) per segment", self.segments),
            ("Note terms of good and bad labels", self.note_terms),
        ):
            sections.append(f"## {title}\n\n{summaries.markdown(frame, max_rows=60)}\n")
        return "\n".join(sections)


def load_prediction_feedback(
    con: duckdb.DuckDBPyConnection,
    labeling: LabelingSettings,
    as_of: datetime,
    since: datetime,
) -> int:
    """Build the temp relation ``prediction_feedback`` (every environment); returns its rows."""
    every_environment = labeling.model_copy(update={"environments": list(ENVIRONMENTS)})
    write_labels(con, "stats_labels", every_environment, as_of, temporary=True)
    con.execute(
        PREDICTION_FEEDBACK_SQL,
        {
            "as_of": as_of,
            "since": since,
            "precedence": list(HUMAN_PRECEDENCE),
            "human_types": list(HUMAN_TYPES),
        },
    )
    return con.execute(f"SELECT count(*) FROM {PREDICTION_FEEDBACK}").fetchall()[0][0]


def with_wilson_interval(
    frame: pd.DataFrame, successes: str, trials: str, alpha: float, prefix: str
) -> pd.DataFrame:
    """``prefix``, ``prefix_low``, ``prefix_high``: the rate and its Wilson interval."""
    from statsmodels.stats.proportion import proportion_confint

    n = frame[trials].to_numpy(dtype=float)
    k = frame[successes].to_numpy(dtype=float)
    low, high = proportion_confint(k, np.maximum(n, 1), alpha=alpha, method="wilson")
    has = n > 0
    return frame.assign(
        **{
            prefix: np.where(has, k / np.maximum(n, 1), np.nan),
            f"{prefix}_low": np.where(has, low, np.nan),
            f"{prefix}_high": np.where(has, high, np.nan),
        }
    )


def _segments(con: duckdb.DuckDBPyConnection, settings: AnalyticsSettings) -> pd.DataFrame:
    if not settings.segments:
        return pd.DataFrame(columns=["field", "value", "labeled", "good"])
    # UNPIVOT drops NULLs: a missing value is its own segment, '(none)'
    casts = ", ".join(
        f"coalesce({name}::VARCHAR, '(none)') AS {name}" for name in settings.segments
    )
    frame = con.execute(
        f"""
        SELECT field, value, count(*) AS labeled,
               sum(label) AS good
        FROM (UNPIVOT (SELECT label, {casts} FROM {PREDICTION_FEEDBACK} WHERE label IS NOT NULL)
              ON {", ".join(settings.segments)} INTO NAME field VALUE value)
        GROUP BY field, value
        QUALIFY row_number() OVER (PARTITION BY field ORDER BY count(*) DESC, value) <= 20
        ORDER BY field, labeled DESC, value
        """
    ).df()
    return with_wilson_interval(frame, "good", "labeled", settings.alpha, "effectiveness")


def _note_terms(
    con: duckdb.DuckDBPyConnection, settings: AnalyticsSettings, as_of: datetime
) -> pd.DataFrame:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    terms = con.execute(
        NOTE_TERMS_SQL,
        {
            "as_of": as_of,
            "stop_words": sorted(ENGLISH_STOP_WORDS),
            "min_count": settings.min_term_count,
        },
    ).df()
    good = terms[terms["log_odds"] > 0].nlargest(settings.top_terms, "log_odds")
    bad = terms[terms["log_odds"] < 0].nsmallest(settings.top_terms, "log_odds")
    return pd.concat([good.assign(side="good"), bad.assign(side="bad")], ignore_index=True)[
        ["side", "term", "good", "bad", "log_odds"]
    ]


def feedback_stats(
    con: duckdb.DuckDBPyConnection,
    labeling: LabelingSettings,
    settings: AnalyticsSettings,
    as_of: datetime,
    since: datetime | None = None,
    by: tuple[str, ...] = WEEKLY_GROUPS,
) -> FeedbackStats:
    """The weekly figures (per week and ``by``), the FP-rate trend per environment,
    effectiveness per segment and the note terms that go with good and bad labels, over
    predictions in (``since``, ``as_of``]."""
    since = since or as_of - timedelta(days=settings.since_days)
    query = weekly_sql(by)
    load_prediction_feedback(con, labeling, as_of, since)
    weekly = con.execute(query).df()
    fp_trend = with_wilson_interval(
        con.execute(FP_TREND_SQL).df(), "false_positives", "labeled", settings.alpha, "fp_rate"
    )
    return FeedbackStats(
        since=since,
        as_of=as_of,
        weekly=weekly,
        fp_trend=fp_trend,
        segments=_segments(con, settings),
        note_terms=_note_terms(con, settings, as_of),
    )
