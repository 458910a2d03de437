"""What the serving policy is fitted on, read from the warehouse: matured labels the champion's
procedure never trained on, in time order, with that procedure's out-of-sample probability."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.serving.policy.proposal import PolicyRows
from feedback_pipeline.serving.policy.store import PolicyError
from feedback_pipeline.vocabulary import HOLDOUT_SOURCES, OUTCOMES
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry


def load_policy_rows(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    as_of: datetime,
    lookback_days: int,
) -> tuple[PolicyRows, str, str]:
    """Matured outcome and explicit labels the champion's procedure never trained on, with
    its probability; returns (rows, champion version, champion run id).

    A refit champion has trained on every matured label, so its rows are scored by the
    candidate it is a refit of (the same procedure, without the newest rows): the policy is
    fitted on that candidate's out-of-sample scores and applied to the refit."""
    champion = registry.alias_version(CHAMPION)
    if champion is None:
        raise PolicyError("no champion yet: run retrain_job first; a policy is for a model")
    tags = registry.version_tags(champion)
    scorer = tags.get("refit_of") or champion
    scorer_tags = tags if scorer == champion else registry.version_tags(scorer)
    watermark = scorer_tags.get("data_watermark")
    features = json.loads(tags["features"])
    structure = json.dumps({name: "DOUBLE" for name in features})
    frame = con.execute(
        f"""
        SELECT unnest(json_transform(features, '{structure}')), rule_confidence,
               ml_enhanced::DOUBLE AS ml_enhanced, label,
               CASE WHEN list_contains($outcomes, deciding_signal)
                    THEN (deciding_signal = 'win')::DOUBLE END AS won
        FROM {LABELED_OUTCOMES}
        WHERE list_contains($sources, label_source) AND labeled_at <= $as_of
          AND predicted_at > $since
          AND ($watermark IS NULL OR labeled_at > $watermark::TIMESTAMP)
        ORDER BY predicted_at, prediction_id
        """,
        {
            "outcomes": list(OUTCOMES),
            "sources": list(HOLDOUT_SOURCES),
            "as_of": as_of,
            "since": as_of - timedelta(days=lookback_days),
            "watermark": None if watermark in (None, "None") else watermark,
        },
    ).df()
    probability = (
        registry.predict_probability(scorer, frame[features]).to_numpy(dtype=float)
        if len(frame)
        else np.array([])
    )
    rows = PolicyRows(
        frame=frame[[*features, "rule_confidence"]],
        probability=probability,
        y=frame["label"].to_numpy(dtype=int),
        ml_enhanced=frame["ml_enhanced"].to_numpy(dtype=float),
        won=frame["won"].to_numpy(dtype=float),
        features=features,
    )
    return rows, champion, registry.run_id(champion)
