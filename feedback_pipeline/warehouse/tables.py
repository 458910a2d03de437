"""Every warehouse table name, defined once."""

from __future__ import annotations

SCHEMAS = ("raw", "labeled", "training", "ops", "backtest")

RAW_PREDICTIONS = "raw.predictions"
RAW_FEEDBACK_EVENTS = "raw.feedback_events"
RAW_BASELINE_EXAMPLES = "raw.baseline_examples"
REJECTED_RECORDS = "raw.rejected_records"
INGESTED_FILES = "raw.ingested_files"
LABELED_OUTCOMES = "labeled.labeled_outcomes"
LABELED_OUTCOMES_INFO = "labeled.labeled_outcomes_info"
TRAINING_SET = "training.training_set"
TRAINING_SET_INFO = "training.training_set_info"
QUARANTINED_WEEKS = "training.quarantined_weeks"
RETRAINING_EVENTS = "ops.retraining_events"
SERVING_POLICIES = "ops.serving_policies"
BACKTEST_PERIODS = "backtest.periods"
BACKTEST_PREDICTIONS = "backtest.predictions"

# What `feedback-pipeline status` and the demo count.
COUNTED_TABLES = (
    RAW_PREDICTIONS,
    RAW_FEEDBACK_EVENTS,
    RAW_BASELINE_EXAMPLES,
    REJECTED_RECORDS,
    INGESTED_FILES,
    LABELED_OUTCOMES,
)
