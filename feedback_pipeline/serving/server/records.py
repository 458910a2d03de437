"""Served rows as contract prediction records: the buffered form of one request's rows and the
JSON lines the write-back lands, kept apart from the files and threads that write them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from feedback_pipeline.serving.server.rows import Rows

# The prediction contract's field order (ingest/contract.py PREDICTIONS), features spliced in.
RECORD_FIELDS = (
    "prediction_id",
    "predicted_at",
    "confidence",
    "entity_id",
    "environment",
    "model_version",
    "rule_confidence",
    "ml_enhanced",
    "variant",
)


def utc_iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as the landing contract and the request log expect."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Served:
    """One request's served rows, as buffered for the write-back: turned into landing records
    on the write-back thread, not on the request's path."""

    at: str
    model_version: str | None
    rows: Rows
    confidence: np.ndarray
    feature_names: tuple[str, ...]
    features: np.ndarray  # rows x feature_names, float64

    def __len__(self) -> int:
        return len(self.confidence)


def landing_lines(batches: list[Served]) -> tuple[str, int]:
    """JSON lines of contract prediction records for ``batches``, and how many served rows are
    not records (no confidence, or no feature at all). Batches sharing a feature list are
    built together: the record fields with one ``to_json``, the features object with another,
    spliced before the record's closing brace."""
    groups: dict[tuple[str, ...], list[Served]] = {}
    for batch in batches:
        groups.setdefault(batch.feature_names, []).append(batch)
    texts_out, skipped = [], 0
    for names, group in groups.items():
        counts = [len(b) for b in group]
        confidence = np.concatenate([b.confidence for b in group])
        keep = ~np.isnan(confidence) & bool(names)
        skipped += int((~keep).sum())
        if not keep.any():
            continue

        def column(name: str, group: list[Served] = group, keep: np.ndarray = keep) -> np.ndarray:
            return np.concatenate([getattr(b.rows, name) for b in group])[keep]

        records = pd.DataFrame(
            {
                "prediction_id": column("ids"),
                "predicted_at": np.repeat([b.at for b in group], counts)[keep],
                "confidence": confidence[keep],
                "entity_id": column("entity_id"),
                "environment": column("environment"),
                "model_version": np.repeat(
                    np.array([b.model_version for b in group], dtype=object), counts
                )[keep],
                "rule_confidence": column("rule_confidence"),
                "ml_enhanced": column("ml_enhanced"),
                "variant": column("variant"),
            },
            columns=list(RECORD_FIELDS),
        )
        values = np.concatenate([b.features for b in group])[keep]
        features = pd.DataFrame(np.where(np.isfinite(values), values, np.nan), columns=names)
        outer = records.to_json(orient="records", lines=True, double_precision=15)
        inner = features.to_json(orient="records", lines=True, double_precision=15)
        lines = pd.Series(outer.rstrip("\n").split("\n"), dtype=object)
        spliced = lines.str[:-1] + ',"features":' + pd.Series(inner.rstrip("\n").split("\n")) + "}"
        texts_out.append("\n".join(spliced) + "\n")
    return "".join(texts_out), skipped
