"""A score we already have, as the classifier scikit-learn's calibration tools expect (its own
module: it subclasses scikit-learn, which the code location does not import)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class ScoreAsProbability(ClassifierMixin, BaseEstimator):
    """A fitted model's probability as a classifier: its one input column is the score, so
    scikit-learn's calibration tools calibrate scores we already have."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        p = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)
