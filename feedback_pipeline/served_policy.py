"""The serving policy applied to the model's probability: what consumers of the champion get.

Logged with every model (an artifact of each version) and imported by ``serving_model.py``; the
serving-policy stages import it too, so the "after" figures they report are computed by the very
code that serves. It needs numpy and pandas only, never ``feedback_pipeline``: a leaf module, used
by the registry (which logs it) and by ``serving.policy`` (which fits and stores policies).

A policy is a ``ServingPolicy``; stored and published it is plain JSON (``to_dict``)::

    {"version": 3, "threshold": 0.62, "blend_weight": 0.5, "model_run_id": "...",
     "calibration": {"method": "isotonic", "x": [...], "y": [...]}   # or sigmoid: a, b
     "rule_weights": {"intercept": -0.1, "coefficients": {"momentum": 0.8, ...}}}

Per row: ``calibrated`` = the calibration map of ``probability`` (only when the policy was
fitted for this very model, ``model_run_id``); the rule score is the learned rule weights'
logistic score, else the caller's ``rule_confidence``; ``blended_confidence`` = ``blend_weight``
x calibrated + (1 - ``blend_weight``) x rule score (calibrated alone without a rule score);
``decision`` = blended >= ``threshold``. A row the model cannot score (a feature missing or not
finite) falls back to ``rule_confidence`` and is flagged ``fallback``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

POLICY_ARTIFACT = "serving_policy.json"
POLICY_RUN_TAG = "serving_policy_run_id"  # registered-model tags naming the active policy
POLICY_VERSION_TAG = "serving_policy_version"
OUTPUT_COLUMNS = (
    "probability",
    "calibrated",
    "blended_confidence",
    "decision",
    "fallback",
    "policy_version",
)


@dataclass(frozen=True)
class Calibration:
    """A calibration map: isotonic (points ``x`` -> ``y``) or sigmoid (Platt's ``a``, ``b``)."""

    method: str  # "isotonic" or "sigmoid"
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 0.0
    b: float = 0.0

    def to_dict(self) -> dict:
        if self.method == "isotonic":
            return {"method": self.method, "x": list(self.x), "y": list(self.y)}
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: Mapping) -> Calibration:
        if data["method"] == "isotonic":
            return cls(data["method"], x=tuple(data["x"]), y=tuple(data["y"]))
        return cls(data["method"], a=data["a"], b=data["b"])


@dataclass(frozen=True)
class RuleWeights:
    """Learned rule weights: a logistic score of the raw features, in their fitted order."""

    intercept: float
    coefficients: tuple[tuple[str, float], ...]  # (feature, weight)

    def to_dict(self) -> dict:
        return {"intercept": self.intercept, "coefficients": dict(self.coefficients)}

    @classmethod
    def from_dict(cls, data: Mapping) -> RuleWeights:
        return cls(data["intercept"], tuple(data["coefficients"].items()))


@dataclass(frozen=True)
class ServingPolicy:
    """One version of the serving policy. The defaults are version 0: no calibration, no learned
    rule weights."""

    version: int = 0
    threshold: float = 0.5
    blend_weight: float = 0.6
    calibration: Calibration | None = None
    rule_weights: RuleWeights | None = None
    model_run_id: str | None = None  # the model the calibration was fitted for

    def to_dict(self) -> dict:
        """The stored and published JSON (keys in this order, as every version has them)."""
        return {
            "version": self.version,
            "threshold": self.threshold,
            "blend_weight": self.blend_weight,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "rule_weights": None if self.rule_weights is None else self.rule_weights.to_dict(),
            "model_run_id": self.model_run_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ServingPolicy:
        calibration, rule_weights = data.get("calibration"), data.get("rule_weights")
        return cls(
            version=data["version"],
            threshold=data["threshold"],
            blend_weight=data["blend_weight"],
            calibration=None if calibration is None else Calibration.from_dict(calibration),
            rule_weights=None if rule_weights is None else RuleWeights.from_dict(rule_weights),
            model_run_id=data.get("model_run_id"),
        )


def calibrate(probability: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """The calibration map: isotonic (piecewise linear between its thresholds, clipped at the
    ends, as scikit-learn's IsotonicRegression predicts) or sigmoid (Platt: 1 / (1 + exp(a p +
    b)), as CalibratedClassifierCV's sigmoid does)."""
    if calibration is None:
        return probability
    if calibration.method == "isotonic":
        return np.interp(probability, calibration.x, calibration.y)
    return 1.0 / (1.0 + np.exp(calibration.a * probability + calibration.b))


def rule_inputs(rule_weights: RuleWeights | None) -> list[str]:
    """The request columns a rule score reads: the caller's ``rule_confidence`` (also the
    fallback) and the learned rule weights' features."""
    names = [] if rule_weights is None else [name for name, _ in rule_weights.coefficients]
    return ["rule_confidence", *(n for n in names if n != "rule_confidence")]


def policy_inputs(policy: ServingPolicy) -> list[str]:
    """The request columns the policy reads besides the model's probability."""
    return rule_inputs(policy.rule_weights)


def _rule_score(columns: Mapping[str, np.ndarray], rule_weights: RuleWeights | None, rows: int):
    if rule_weights is None:
        return columns.get("rule_confidence", np.full(rows, np.nan))
    logit = np.full(rows, float(rule_weights.intercept))
    for name, weight in rule_weights.coefficients:
        logit = logit + weight * columns.get(name, np.full(rows, np.nan))
    return 1.0 / (1.0 + np.exp(-logit))


def rule_score(frame: pd.DataFrame, rule_weights: RuleWeights | None) -> np.ndarray:
    """The learned rule weights' logistic score; the caller's ``rule_confidence`` without them
    (NaN where neither is there)."""
    return _rule_score(frame_columns(frame, rule_inputs(rule_weights)), rule_weights, len(frame))


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The features as a float matrix, NaN where missing or not a number. Numeric columns (the
    common case) are taken as they are; only other columns are parsed."""
    values = frame.reindex(columns=features)
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in values.dtypes):
        return values.to_numpy(dtype=float, na_value=np.nan)
    return values.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def frame_columns(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """``names`` as float columns (NaN where missing or not a number), for ``serve_columns``."""
    return dict(zip(names, feature_matrix(frame, names).T, strict=True))


def serve_columns(
    columns: Mapping[str, np.ndarray],
    probability: np.ndarray,
    scorable: np.ndarray,
    policy: ServingPolicy,
    model_run_id: str | None,
) -> dict[str, np.ndarray]:
    """The served columns (``OUTPUT_COLUMNS``) given the model's ``probability`` on its
    scorable rows (NaN elsewhere) and the request's float ``columns`` (at least
    ``policy_inputs(policy)`` that the caller sent; an absent one counts as missing). Numpy
    only: the server calls it per request without building a DataFrame."""
    rows = len(probability)
    caller_rule = columns.get("rule_confidence", np.full(rows, np.nan))
    calibration = policy.calibration if policy.model_run_id == model_run_id else None
    calibrated = calibrate(probability, calibration)
    rules = _rule_score(columns, policy.rule_weights, rows)
    weight = policy.blend_weight
    blended = np.where(np.isfinite(rules), weight * calibrated + (1.0 - weight) * rules, calibrated)
    blended = np.where(scorable, blended, caller_rule)
    return {
        "probability": np.where(scorable, probability, np.nan),
        "calibrated": np.where(scorable, calibrated, np.nan),
        "blended_confidence": blended,
        "decision": np.nan_to_num(blended, nan=-1.0) >= policy.threshold,
        "fallback": ~scorable,
        "policy_version": np.full(rows, int(policy.version)),
    }


def serve(
    frame: pd.DataFrame,
    probability: np.ndarray,
    scorable: np.ndarray,
    policy: ServingPolicy,
    model_run_id: str | None,
) -> pd.DataFrame:
    """``serve_columns`` for a DataFrame of requests, as a DataFrame on its index."""
    columns = frame_columns(frame, policy_inputs(policy))
    served = serve_columns(columns, probability, scorable, policy, model_run_id)
    return pd.DataFrame(served, index=frame.index)
