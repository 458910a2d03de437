from feedback_pipeline.assets.ingestion import (
    baseline_examples,
    raw_feedback_events,
    raw_predictions,
)
from feedback_pipeline.assets.labeling import labeled_outcomes

assets = [raw_predictions, raw_feedback_events, baseline_examples, labeled_outcomes]
