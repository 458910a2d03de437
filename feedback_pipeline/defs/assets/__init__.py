from feedback_pipeline.defs.assets.analytics import ab_comparison, feedback_stats, serving_policy
from feedback_pipeline.defs.assets.backtest import backtest_report
from feedback_pipeline.defs.assets.evaluation import champion_model, evaluation_report
from feedback_pipeline.defs.assets.ingest import (
    baseline_examples,
    raw_feedback_events,
    raw_predictions,
)
from feedback_pipeline.defs.assets.labels import labeled_outcomes
from feedback_pipeline.defs.assets.monitoring import feature_drift, live_performance, serving_health
from feedback_pipeline.defs.assets.training import challenger_models, training_set

assets = [
    raw_predictions,
    raw_feedback_events,
    baseline_examples,
    labeled_outcomes,
    training_set,
    challenger_models,
    evaluation_report,
    champion_model,
    backtest_report,
    feedback_stats,
    ab_comparison,
    serving_policy,
    feature_drift,
    live_performance,
    serving_health,
]
