"""A training set's splits as arrays: float64 features (NULL -> NaN), labels, weights and
times, read straight to numpy; and the seeded sample candidates are fit on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.training.dataset import quote_identifier, training_set_table
from feedback_pipeline.vocabulary import BASELINE_SOURCE


@dataclass(frozen=True)
class Split:
    X: pd.DataFrame
    y: np.ndarray
    weight: np.ndarray
    labeled_at: np.ndarray  # datetime64: when each row's label became known
    event_time: np.ndarray  # datetime64: when the row happened (its prediction's time)

    def subset(self, mask: np.ndarray) -> Split:
        return Split(
            self.X[mask].reset_index(drop=True),
            self.y[mask],
            self.weight[mask],
            self.labeled_at[mask],
            self.event_time[mask],
        )

    def __len__(self) -> int:
        return len(self.y)


def selection_sample(split: Split, max_rows: int | None, seed: int) -> Split:
    """At most ``max_rows`` rows of ``split``, drawn at random (seeded) and kept in time order.
    Candidate procedures are fit and compared on the same sample, so the search stops costing
    more as the data grows; the promoted refit still learns from every final row."""
    if max_rows is None or len(split) <= max_rows:
        return split
    keep = np.zeros(len(split), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(split), size=max_rows, replace=False)] = True
    return split.subset(keep)


def load_split(
    con: duckdb.DuckDBPyConnection,
    split: str | tuple[str, ...],
    features: list[str],
    content_hash: str | None = None,
    feedback_labeled_after: datetime | None = None,
) -> Split:
    """One split (or several) of the set ``content_hash`` (None: the newest) as float64
    features (NULL -> NaN), labels, weights and times, in time order. With
    ``feedback_labeled_after``: only feedback rows (no baseline rows) labeled after it."""
    splits = [split] if isinstance(split, str) else list(split)
    columns = ", ".join(quote_identifier(n) for n in features)
    only_feedback = (
        f"AND source <> '{BASELINE_SOURCE}' AND labeled_at > $after"
        if feedback_labeled_after is not None
        else ""
    )
    arrays = con.execute(
        f"SELECT label, weight, labeled_at, event_time, {columns} "
        f"FROM {training_set_table(content_hash)} WHERE list_contains($splits, split) "
        f"{only_feedback} ORDER BY event_time, row_id",
        {"splits": splits}
        | ({"after": feedback_labeled_after} if feedback_labeled_after is not None else {}),
    ).fetchnumpy()  # straight to numpy: no intermediate DataFrame to copy
    return Split(
        X=pd.DataFrame({n: np.ma.filled(arrays[n].astype(np.float64), np.nan) for n in features}),
        y=np.asarray(arrays["label"], dtype=np.int64),
        weight=np.asarray(arrays["weight"], dtype=np.float64),
        labeled_at=np.asarray(arrays["labeled_at"], dtype="datetime64[us]"),
        event_time=np.asarray(arrays["event_time"], dtype="datetime64[us]"),
    )
