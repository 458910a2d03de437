"""The warehouse schema, owned here and only here: the landing contract's record kinds and
fields (pure data, from which the raw tables are generated) and every table the pipeline keeps,
created or upgraded by ``ensure_tables`` whenever the warehouse is opened for writing.

Table names live in ``tables.py``. Stages write and read these tables; none creates one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import duckdb

from feedback_pipeline.vocabulary import ENVIRONMENTS, EVENT_TYPES, OUTCOMES
from feedback_pipeline.warehouse.tables import (
    BACKTEST_PERIODS,
    BACKTEST_PREDICTIONS,
    INGESTED_FILES,
    QUARANTINED_WEEKS,
    RAW_BASELINE_EXAMPLES,
    RAW_FEEDBACK_EVENTS,
    RAW_PREDICTIONS,
    REJECTED_RECORDS,
    RETRAINING_EVENTS,
    SCHEMAS,
    SERVING_POLICIES,
    TRAINING_SET_INFO,
)

FieldType = Literal["string", "timestamp", "number", "bool", "features", "enum", "label", "integer"]

SQL_TYPES = {
    "string": "VARCHAR",
    "enum": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "number": "DOUBLE",
    "bool": "BOOLEAN",
    "label": "INTEGER",
    "integer": "INTEGER",
    "features": "JSON",
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    required: bool = False
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    default: str | None = None  # value used when the field is absent


@dataclass(frozen=True)
class RecordRule:
    """A rule across fields: ``broken_when`` is SQL over the typed columns."""

    broken_when: str
    reason: str


@dataclass(frozen=True)
class KindSpec:
    kind: str  # landing folder name
    table: str
    id_field: str
    fields: tuple[FieldSpec, ...]
    rules: tuple[RecordRule, ...] = field(default_factory=tuple)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]


PREDICTIONS = KindSpec(
    kind="predictions",
    table=RAW_PREDICTIONS,
    id_field="prediction_id",
    fields=(
        FieldSpec("prediction_id", "string", required=True),
        FieldSpec("predicted_at", "timestamp", required=True),
        FieldSpec("confidence", "number", required=True, low=0.0, high=1.0),
        FieldSpec("features", "features", required=True),
        FieldSpec("entity_id", "string"),
        FieldSpec("model_version", "string"),
        FieldSpec("environment", "enum", choices=ENVIRONMENTS, default="prod"),
        FieldSpec("rule_confidence", "number", low=0.0, high=1.0),
        FieldSpec("ml_enhanced", "bool"),
        FieldSpec("variant", "string"),
    ),
)

FEEDBACK = KindSpec(
    kind="feedback",
    table=RAW_FEEDBACK_EVENTS,
    id_field="event_id",
    fields=(
        FieldSpec("event_id", "string", required=True),
        FieldSpec("prediction_id", "string", required=True),
        FieldSpec("event_type", "enum", required=True, choices=EVENT_TYPES),
        FieldSpec("occurred_at", "timestamp", required=True),
        FieldSpec("outcome", "enum", choices=OUTCOMES),
        FieldSpec("return_pct", "number"),
        FieldSpec("modified_value", "number"),
        FieldSpec("rating", "integer", low=1, high=5),
        FieldSpec("environment", "enum", choices=ENVIRONMENTS),
        FieldSpec("source", "string"),
        FieldSpec("notes", "string"),
    ),
    rules=(
        RecordRule(
            "event_type = 'outcome' AND outcome IS NULL",
            "outcome is required when event_type is 'outcome'",
        ),
        RecordRule(
            "event_type <> 'outcome' AND outcome IS NOT NULL",
            "outcome is only allowed when event_type is 'outcome'",
        ),
        RecordRule(
            "event_type = 'rate' AND rating IS NULL",
            "rating is required when event_type is 'rate'",
        ),
        RecordRule(
            "event_type <> 'rate' AND rating IS NOT NULL",
            "rating is only allowed when event_type is 'rate'",
        ),
    ),
)

BASELINE = KindSpec(
    kind="baseline",
    table=RAW_BASELINE_EXAMPLES,
    id_field="example_id",
    fields=(
        FieldSpec("example_id", "string", required=True),
        FieldSpec("as_of", "timestamp", required=True),
        FieldSpec("label", "label", required=True),
        FieldSpec("features", "features", required=True),
        FieldSpec("entity_id", "string"),
        FieldSpec("source", "string"),
    ),
)

KINDS: dict[str, KindSpec] = {spec.kind: spec for spec in (PREDICTIONS, FEEDBACK, BASELINE)}


# Columns every raw table has besides the contract's fields: where and when a record landed.
LINEAGE_COLUMNS = (
    ("source_file", "VARCHAR NOT NULL"),
    ("source_line", "BIGINT"),
    ("ingested_at", "TIMESTAMP NOT NULL"),
)


def raw_table_columns(spec: KindSpec) -> list[tuple[str, str]]:
    """(name, SQL type) of a kind's raw table: its fields, then the lineage columns."""
    return [(f.name, SQL_TYPES[f.type]) for f in spec.fields] + [
        (name, sql_type.removesuffix(" NOT NULL")) for name, sql_type in LINEAGE_COLUMNS
    ]


def raw_table_ddl(spec: KindSpec) -> str:
    """``CREATE TABLE`` for a kind's raw table, generated from its fields: a field is NOT NULL
    when it is required or has a default. Ids are unique by ingestion (a blocking check
    verifies), not by an index."""
    columns = [
        f"{f.name} {SQL_TYPES[f.type]}{' NOT NULL' if f.required or f.default else ''}"
        for f in spec.fields
    ] + [f"{name} {sql_type}" for name, sql_type in LINEAGE_COLUMNS]
    return f"CREATE TABLE IF NOT EXISTS {spec.table} (\n    " + ",\n    ".join(columns) + "\n);"


# The pipeline's own tables.
DDL = f"""
CREATE TABLE IF NOT EXISTS {INGESTED_FILES} (
    kind VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    file_format VARCHAR,
    size_bytes BIGINT NOT NULL,
    status VARCHAR NOT NULL,          -- ingested | unreadable | unsupported | refused
    error VARCHAR,
    records_read BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    ingested_at TIMESTAMP NOT NULL,
    PRIMARY KEY (path, content_hash)
);
CREATE TABLE IF NOT EXISTS {REJECTED_RECORDS} (
    kind VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    line_number BIGINT,
    raw_text VARCHAR,
    reason VARCHAR NOT NULL,          -- a stable category, good for GROUP BY
    detail VARCHAR,                   -- the specifics (which id, which earlier line or file)
    rejected_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS {RETRAINING_EVENTS} (
    event_id VARCHAR PRIMARY KEY,
    recorded_at TIMESTAMP NOT NULL,
    action VARCHAR NOT NULL,  -- retrain | rollback | forced_promotion | failed_retrain | repair
    trigger VARCHAR,
    as_of TIMESTAMP,
    old_version VARCHAR,              -- champion before
    new_version VARCHAR,              -- champion after (= old_version when nothing moved)
    challenger_version VARCHAR,
    promoted BOOLEAN NOT NULL,
    mode VARCHAR,
    reason VARCHAR NOT NULL,
    metrics JSON,
    deltas JSON,
    dagster_run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS {TRAINING_SET_INFO} (
    as_of TIMESTAMP, window_start TIMESTAMP, features VARCHAR[], rows BIGINT,
    content_hash VARCHAR, data_watermark TIMESTAMP, settings JSON, data_clock TIMESTAMP,
    maturity_days DOUBLE, built_at TIMESTAMP    -- one row per kept training set
);
CREATE TABLE IF NOT EXISTS {QUARANTINED_WEEKS} (
    model_name VARCHAR NOT NULL,       -- whose gate found it (a backtest's policies differ)
    week_start TIMESTAMP NOT NULL,     -- feedback on predictions of this week is left out
    found_as_of TIMESTAMP NOT NULL,    -- the retrain's as_of: earlier retrains never see it
    champion_version VARCHAR,
    rows BIGINT,
    auc DOUBLE,
    p_value DOUBLE,
    recorded_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS {BACKTEST_PERIODS} (
    backtest_id VARCHAR NOT NULL,
    policy VARCHAR NOT NULL,
    period_start TIMESTAMP NOT NULL,
    period_end TIMESTAMP NOT NULL,
    champion_version VARCHAR,          -- the model that scored the period (trained before it)
    promoted BOOLEAN,
    reason VARCHAR,
    rows BIGINT,                       -- predictions scored in the period
    seconds DOUBLE,                    -- its labels, retrain and scoring of the period
    recorded_at TIMESTAMP NOT NULL
);
-- prequential metrics of the period, filled in by the summary from the labels that arrived
ALTER TABLE {BACKTEST_PERIODS} ADD COLUMN IF NOT EXISTS accuracy DOUBLE;
ALTER TABLE {BACKTEST_PERIODS} ADD COLUMN IF NOT EXISTS log_loss DOUBLE;
ALTER TABLE {BACKTEST_PERIODS} ADD COLUMN IF NOT EXISTS auc DOUBLE;
ALTER TABLE {BACKTEST_PERIODS} ADD COLUMN IF NOT EXISTS fp_rate DOUBLE;
CREATE TABLE IF NOT EXISTS {BACKTEST_PREDICTIONS} (
    backtest_id VARCHAR NOT NULL,
    policy VARCHAR NOT NULL,
    prediction_id VARCHAR NOT NULL,
    period_start TIMESTAMP NOT NULL,
    version VARCHAR,
    probability DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS {SERVING_POLICIES} (
    policy_version INTEGER PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,          -- proposed | active | superseded | rolled_back
    model_version VARCHAR,            -- the champion it was fitted for
    policy JSON NOT NULL,             -- the values, as the served model reads them
    reason VARCHAR NOT NULL,
    stages JSON,                      -- per stage: ran, changed, reason, before, after
    metrics_before JSON,              -- the policy it would replace, on held-out rows
    metrics_after JSON,               -- this policy on the same rows
    applied_at TIMESTAMP,
    mlflow_run_id VARCHAR,            -- the run holding serving_policy.json once applied
    rolled_back_at TIMESTAMP,
    rollback_reason VARCHAR,
    dagster_run_id VARCHAR
);
"""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every schema and table that is missing, and bring an older warehouse's tables up
    to date (each step is idempotent)."""
    for schema in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    _drop_unkeyed_training_set_info(con)
    con.execute(DDL)
    for spec in KINDS.values():
        con.execute(raw_table_ddl(spec))
    # Added after the first release: lets reruns skip unchanged files without reading them.
    con.execute(f"ALTER TABLE {INGESTED_FILES} ADD COLUMN IF NOT EXISTS mtime_ns BIGINT")
    # Added later: which registered model a ledger row is about (NULL: the live one).
    con.execute(f"ALTER TABLE {RETRAINING_EVENTS} ADD COLUMN IF NOT EXISTS model_name VARCHAR")
    # Fields added to the contract later (variant, rating) reach older warehouses too.
    for spec in KINDS.values():
        for name, sql_type in raw_table_columns(spec):
            con.execute(f"ALTER TABLE {spec.table} ADD COLUMN IF NOT EXISTS {name} {sql_type}")
    # Dropped after the first release: a record's content hash is computed from its typed
    # values when a repeated id needs it, instead of being written for every record.
    for spec in KINDS.values():
        con.execute(f"ALTER TABLE {spec.table} DROP COLUMN IF EXISTS record_hash")


def _drop_unkeyed_training_set_info(con: duckdb.DuckDBPyConnection) -> None:
    """A warehouse from before training sets were keyed (a one-row info table without
    ``built_at``) loses that table: its set is rebuilt by the next run."""
    old = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'training' "
        "AND table_name = 'training_set_info' AND NOT EXISTS (SELECT 1 FROM "
        "information_schema.columns WHERE table_schema = 'training' "
        "AND table_name = 'training_set_info' AND column_name = 'built_at')"
    ).fetchall()[0][0]
    if old:
        con.execute(f"DROP TABLE {TRAINING_SET_INFO}")
