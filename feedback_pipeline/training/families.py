"""Challenger model families: build, fit with sample weights, search. A family's library
(scikit-learn, XGBoost) is imported when it builds an estimator, so naming the families does not
load them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from feedback_pipeline.metrics import (
    classification_metrics,
    predict_probability,
    weighted_log_loss,
)
from feedback_pipeline.training.splits import Split

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline
    from xgboost import XGBClassifier

HALF_LIFE = "half_life_days"


@dataclass(frozen=True)
class ModelFamily:
    """One model family: how its estimator is built from hyperparameters and a seed, its default
    hyperparameters, and the ranges a full retrain's search draws from. The estimator must take
    ``fit(X, y, sample_weight=...)`` (a scikit-learn ``Pipeline`` routes the weights to its last
    step) and ``predict_proba``; features arrive as float64 with NaN for missing values."""

    name: str
    build: Callable[[dict[str, Any], int], Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, list[Any]] = field(default_factory=dict)


FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make ``family`` selectable by name in ``models.families``."""
    FAMILIES[family.name] = family
    return family


def family_named(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"models.families: unknown family {name!r}; registered: {', '.join(sorted(FAMILIES))} "
            "(a new one is registered with feedback_pipeline.training.families.register_family)"
        ) from None


def _xgboost(params: dict[str, Any], seed: int) -> XGBClassifier:
    from xgboost import XGBClassifier

    return XGBClassifier(
        tree_method="hist", n_jobs=2, random_state=seed, eval_metric="logloss", **params
    )


def _logistic_regression(params: dict[str, Any], seed: int) -> Pipeline:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=2000, random_state=seed, **params)),
        ]
    )


def _random_forest(params: dict[str, Any], seed: int) -> Pipeline:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("model", RandomForestClassifier(n_jobs=2, random_state=seed, **params)),
        ]
    )


# The built-in families; their default hyperparameters are typed settings
# (``models.hyperparameters.<family>``), so a misspelled one names the field.
for builtin in (
    ModelFamily(
        "xgboost",
        _xgboost,
        search_space={
            "max_depth": [2, 3, 4, 6],
            "learning_rate": [0.03, 0.05, 0.1, 0.2],
            "n_estimators": [100, 200, 400],
            "min_child_weight": [1.0, 5.0, 10.0],
        },
    ),
    ModelFamily(
        "logistic_regression", _logistic_regression, search_space={"C": [0.01, 0.1, 1.0, 10.0]}
    ),
    ModelFamily(
        "random_forest",
        _random_forest,
        search_space={"max_depth": [4, 8, 12], "min_samples_leaf": [2, 5, 20]},
    ),
):
    register_family(builtin)


def family_params(family: str, settings_params: dict[str, Any]) -> dict[str, Any]:
    """A family's hyperparameters: its defaults, overridden by ``models.hyperparameters``."""
    return {**family_named(family).defaults, **settings_params}


def build_estimator(family: str, params: dict[str, Any], seed: int):
    """An unfitted estimator; scikit-learn families impute missing features first."""
    return family_named(family).build(params, seed)


@contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A Dask client: on ``scheduler`` if given, else on a local cluster of 2 worker processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def fit_xgboost_on_dask(params: dict[str, Any], train: Split, seed: int, client: Any):
    """Train with ``xgboost.dask`` across the cluster's workers; return a plain
    ``XGBClassifier`` holding the trained booster, so it predicts, logs and registers exactly
    like a locally trained one."""
    import dask.dataframe as dd
    from xgboost import dask as dxgb

    partitions = max(len(client.scheduler_info()["workers"]), 1)
    frame = train.X.assign(_label=train.y, _weight=train.weight)  # one frame: aligned partitions
    table = dd.from_pandas(frame, npartitions=partitions)
    X, y, w = table[list(train.X.columns)], table["_label"], table["_weight"]
    distributed_model = dxgb.DaskXGBClassifier(
        tree_method="hist", random_state=seed, eval_metric="logloss", **params
    )
    distributed_model.client = client
    distributed_model.fit(X, y, sample_weight=w)
    local = build_estimator("xgboost", params, seed)
    local.load_model(bytearray(distributed_model.get_booster().save_raw("json")))
    return local


def recency_weights(split: Split, half_life_days: float | None) -> np.ndarray:
    """The split's weights with an exponential time decay: a row's weight halves every
    ``half_life_days`` of age, counted from the newest row of the split (the fit's "now"), then
    scaled to mean 1 so the scale never interacts with XGBoost's min_child_weight."""
    weight = split.weight
    if half_life_days is not None and len(split):
        age_days = (split.event_time.max() - split.event_time) / np.timedelta64(1, "D")
        weight = weight * np.power(0.5, age_days / half_life_days)
    mean = weight.mean() if len(weight) else 0.0
    return weight / mean if mean > 0 else weight


def fit(family: str, params: dict[str, Any], train: Split, seed: int, client: Any = None):
    """Fit one candidate with sample weights (and its ``half_life_days``, a hyperparameter of
    the training procedure, not of the estimator); XGBoost on Dask when a client is given."""
    from sklearn.pipeline import Pipeline

    params = dict(params)
    weight = recency_weights(train, params.pop(HALF_LIFE, None))
    if client is not None and family == "xgboost":
        return fit_xgboost_on_dask(params, replace(train, weight=weight), seed, client)
    estimator = build_estimator(family, params, seed)
    if isinstance(estimator, Pipeline):
        last_step = estimator.steps[-1][0]
        estimator.fit(train.X, train.y, **{f"{last_step}__sample_weight": weight})
    else:
        estimator.fit(train.X, train.y, sample_weight=weight)
    return estimator


def search_candidates(
    family: str, base: dict[str, Any], budget: int, seed: int
) -> list[dict[str, Any]]:
    """The base parameters plus ``budget - 1`` random draws from the family's search space."""
    rng = np.random.default_rng([seed, len(family)])
    space = family_named(family).search_space
    candidates = [dict(base)]
    for _ in range(budget - 1):
        draw = {k: values[int(rng.integers(len(values)))] for k, values in space.items()}
        candidates.append({**base, **draw})
    unique = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


@dataclass
class FittedChallenger:
    family: str
    params: dict[str, Any]
    estimator: Any
    validation_metrics: dict[str, float]
    candidates_tried: int


def train_family(
    family: str,
    base_params: dict[str, Any],
    train: Split,
    validation: Split,
    seed: int,
    budget: int = 1,
    threshold: float = 0.5,
    client: Any = None,
    half_lives: list[float | None] | tuple = (None,),
) -> FittedChallenger:
    """Fit each candidate (parameters x recency half-life), keep the one with the best
    validation log loss, weighted by the label policy (not by recency, so half-lives compare
    on the same rows and weights). The full validation metrics are the chosen one's."""
    if len(np.unique(train.y)) < 2:
        raise ValueError("training split has a single class: not enough labeled data to train")
    candidates = [
        {**params, HALF_LIFE: half_life}
        for params in search_candidates(family, base_params, budget, seed)
        for half_life in half_lives
    ]
    best: tuple[float, dict[str, Any], Any, np.ndarray] | None = None
    for params in candidates:
        estimator = fit(family, params, train, seed, client)
        p = predict_probability(estimator, validation.X)
        loss = weighted_log_loss(validation.y, p, validation.weight)
        if best is None or loss < best[0]:
            best = (loss, params, estimator, p)
    assert best is not None
    _, params, estimator, p = best
    metrics = classification_metrics(validation.y, p, threshold, weights=validation.weight)
    return FittedChallenger(family, params, estimator, metrics, len(candidates))
