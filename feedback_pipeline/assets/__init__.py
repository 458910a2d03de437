from feedback_pipeline.assets.ingestion import (
    baseline_examples,
    raw_feedback_events,
    raw_predictions,
)
from feedback_pipeline.assets.labeling import labeled_outcomes
from feedback_pipeline.assets.retraining import (
    challenger_models,
    champion_model,
    evaluation_report,
    training_set,
)

assets = [
    raw_predictions,
    raw_feedback_events,
    baseline_examples,
    labeled_outcomes,
    training_set,
    challenger_models,
    evaluation_report,
    champion_model,
]
