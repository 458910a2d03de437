"""Offline replay of fixed training procedures and of the rules that choose between them.

Per period (as in ``feedback-pipeline backtest``): the pipeline's own labels and training set as
of the period's start; each procedure of a grid fit on ``train`` (scored on validation and
holdout) and refit on every final row (scoring the period's predictions); and the plain
refit-everything baseline. No MLflow: it answers "which procedure would have served best, and
which choosing rule finds it" in minutes, before a full backtest confirms it.

    python benchmarks/procedure_grid.py replay LANDING OUT.pkl START END EVERY_DAYS \
        [default|wide|stopping]
    python benchmarks/procedure_grid.py compare OUT.pkl

``stopping``: the default half-lives, each also with XGBoost's early stopping on validation
(the refit's tree count scaled by its rows), for the rules that ``compare`` adds on this grid.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

from feedback_pipeline.backtest.replay import (
    BacktestPlan,
    period_predictions,
    prepare_warehouse,
    refit_everything,
)
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.metrics import mcnemar_exact, weighted_log_loss
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import REFIT_SPLITS
from feedback_pipeline.training.dataset import (
    TrainingSetError,
    build_training_set,
    discover_features,
)
from feedback_pipeline.training.families import (
    HALF_LIFE,
    build_estimator,
    fit,
    predict_probability,
    recency_weights,
)
from feedback_pipeline.training.splits import Split, load_split
from feedback_pipeline.warehouse.connection import connect
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES

XGB = Settings().models.hyperparameters.xgboost.model_dump()


STOPPING = "early_stopping_rounds"


def grid(name: str) -> list[tuple[str, dict]]:
    """``default``: the default half-life candidates; ``wide``: more depths, rates, families;
    ``stopping``: the default candidates, then each with early stopping (1,000 trees at most)."""
    procedures = [("xgboost", {**XGB, "half_life_days": h}) for h in (None, 90.0, 365.0)]
    if name == "default":
        return procedures
    if name == "stopping":
        stopped = {**XGB, "n_estimators": 1000, STOPPING: 30}
        return procedures + [("xgboost", {**stopped, HALF_LIFE: h}) for h in (None, 90.0, 365.0)]
    slow = {**XGB, "max_depth": 3, "learning_rate": 0.05, "n_estimators": 300}
    procedures += [("xgboost", {**slow, "half_life_days": h}) for h in (None, 90.0, 365.0)]
    procedures += [
        ("xgboost", {**XGB, "max_depth": 2, "half_life_days": None}),
        (
            "xgboost",
            {
                **XGB,
                "max_depth": 6,
                "learning_rate": 0.05,
                "min_child_weight": 5.0,
                "half_life_days": None,
            },
        ),
        ("xgboost", {**XGB, "min_child_weight": 10.0, "half_life_days": None}),
        ("xgboost", {**XGB, "n_estimators": 100, "half_life_days": None}),
        ("xgboost", {**XGB, "n_estimators": 400, "half_life_days": None}),
        ("xgboost", {**XGB, "half_life_days": 3650.0}),
        ("logistic_regression", {"C": 1.0, "half_life_days": None}),
        ("logistic_regression", {"C": 1.0, "half_life_days": 365.0}),
    ]
    return procedures


def replay(landing: Path, out: Path, plan: BacktestPlan, procedures: list) -> None:
    settings = Settings()
    with tempfile.TemporaryDirectory() as folder:
        con = connect(Path(folder) / "warehouse.duckdb")
        prepare_warehouse(con, None, landing, print)
        periods = []
        for start, end in plan.periods():
            began = time.perf_counter()
            build_labeled_outcomes(con, settings.labeling, start)
            try:
                features = discover_features(con, None)
                build_training_set(con, settings.training, features, start)
            except TrainingSetError as error:
                print(f"{start:%Y-%m-%d}: skipped ({error})")
                continue
            train, validation, holdout = (
                load_split(con, s, features) for s in ("train", "validation", "holdout")
            )
            final = load_split(con, REFIT_SPLITS, features)
            if len(np.unique(train.y)) < 2:
                continue
            ids, X = period_predictions(con, start, end, features)
            scored = []
            for family, params in procedures:
                candidate, refit = (
                    fit_stopped(params, train, validation, final)
                    if STOPPING in params
                    else (fit(family, params, train, 42), fit(family, params, final, 42))
                )
                scored.append(
                    {
                        "validation": predict_probability(candidate, validation.X),
                        "holdout": predict_probability(candidate, holdout.X),
                        "period": predict_probability(refit, X),
                    }
                )
            baseline = refit_everything(con, settings, features, start)
            periods.append(
                {
                    "start": start,
                    "ids": ids,
                    "validation": (validation.y, validation.weight),
                    "holdout": holdout.y,
                    "procedures": scored,
                    "baseline": predict_probability(baseline, X) if baseline else None,
                }
            )
            print(
                f"{start:%Y-%m-%d}: {len(train):,} train rows, {time.perf_counter() - began:.1f} s"
            )
        build_labeled_outcomes(con, settings.labeling, datetime(9999, 1, 1))
        labels = dict(
            con.execute(f"SELECT prediction_id, label FROM {LABELED_OUTCOMES}").fetchall()
        )
        con.close()
    out.write_bytes(pickle.dumps({"procedures": procedures, "periods": periods, "labels": labels}))


def fit_stopped(params: dict, train: Split, validation: Split, final: Split):
    """XGBoost stopped on validation log loss; the refit on every final row gets the best
    round count scaled by its rows (more rows, proportionally more rounds)."""
    params = dict(params)
    half_life = params.pop(HALF_LIFE, None)
    candidate = build_estimator("xgboost", params, 42)
    candidate.fit(
        train.X,
        train.y,
        sample_weight=recency_weights(train, half_life),
        eval_set=[(validation.X, validation.y)],
        sample_weight_eval_set=[validation.weight],
        verbose=False,
    )
    rounds = (candidate.best_iteration + 1) * len(final) / len(train)
    del params[STOPPING]
    params["n_estimators"] = max(1, round(rounds))
    return candidate, fit("xgboost", {**params, HALF_LIFE: half_life}, final, 42)


def compare(path: Path) -> None:
    """Prequential accuracy and log loss of each fixed procedure, of the baseline, and of four
    choosing rules over the default candidates, the whole grid (and the early-stopped ones):
    retrain-always (the best on validation each period); the default gate (switch to it only
    when its holdout log loss is no higher than the current procedure's, else refresh the
    current one); a cautious gate (switch only when that is significantly lower); and a stack
    (every candidate's refit, mixed by weights fit on the holdout)."""
    saved = pickle.loads(path.read_bytes())
    periods, labels, procedures = saved["periods"], saved["labels"], saved["procedures"]
    truth = [np.array([labels.get(i, -1) for i in period["ids"]]) for period in periods]

    y = np.concatenate([t[t >= 0] for t in truth])

    def labeled(chosen: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(c)[t >= 0] for t, c in zip(truth, chosen, strict=True)])

    baseline_right = (labeled([p["baseline"] for p in periods]) >= 0.5) == y

    def score(chosen: list[np.ndarray]) -> str:
        """Accuracy, log loss, and McNemar's exact test against refit-everything: the days only
        one of the two got right, and how likely so lopsided a split is by chance."""
        p = labeled(chosen)
        right = (p >= 0.5) == y
        only_it, only_baseline, p_value = mcnemar_exact(right, baseline_right)
        return (
            f"{np.mean(right):.4f} | {weighted_log_loss(y, p):.4f} | "
            f"{only_it} / {only_baseline} | {p_value:.2g}"
        )

    def validation_loss(period, k):
        y, w = period["validation"]
        return weighted_log_loss(y, period["procedures"][k]["validation"], w)

    def holdout_loss(period, k):
        return weighted_log_loss(period["holdout"], period["procedures"][k]["holdout"])

    print(
        "| procedure or rule | accuracy | log loss | only it right / only refit-everything right "
        "| McNemar p |\n|---|---:|---:|---:|---:|"
    )
    for k, (family, params) in enumerate(procedures):
        shown = ", ".join(
            f"{key} {value}" for key, value in params.items() if XGB.get(key) != value
        )
        chosen = [period["procedures"][k]["period"] for period in periods]
        print(f"| fixed: {family} {shown or '(defaults)'} | {score(chosen)} |")
    print(f"| baseline: refit everything | {score([p['baseline'] for p in periods])} |")
    groups = {"default candidates": [0, 1, 2], "whole grid": list(range(len(procedures)))}
    stopped = [k for k, (_, params) in enumerate(procedures) if STOPPING in params]
    if stopped:
        groups["early-stopped candidates"] = stopped
    for name, candidates in groups.items():
        always, gated, significant, stacked = [], [], [], []
        current = cautious = None
        for period in periods:
            best = min(candidates, key=lambda k: validation_loss(period, k))
            always.append(period["procedures"][best]["period"])
            if current is None or holdout_loss(period, best) <= holdout_loss(period, current):
                current = best
            gated.append(period["procedures"][current]["period"])
            if cautious is None or significantly_lower(period, best, cautious):
                cautious = best
            significant.append(period["procedures"][cautious]["period"])
            stacked.append(holdout_stack(period, candidates))
        print(f"| {name}: retrain always (best on validation) | {score(always)} |")
        print(f"| {name}: log-loss gate with refresh (default) | {score(gated)} |")
        print(f"| {name}: switch only on a significantly lower loss | {score(significant)} |")
        print(f"| {name}: refits mixed by weights fit on the holdout | {score(stacked)} |")


def row_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def significantly_lower(period: dict, challenger: int, current: int) -> bool:
    """The paired per-row holdout log-loss difference's one-sided 95% upper bound is below 0."""
    y = period["holdout"]
    difference = row_losses(y, period["procedures"][challenger]["holdout"]) - row_losses(
        y, period["procedures"][current]["holdout"]
    )
    if challenger == current or len(difference) < 2:
        return challenger == current
    bound = difference.mean() + norm.ppf(0.95) * difference.std(ddof=1) / np.sqrt(len(difference))
    return bool(bound < 0)


def holdout_stack(period: dict, candidates: list[int]) -> np.ndarray:
    """The candidates' refits averaged with simplex weights that minimise the mixed holdout
    predictions' log loss (a stacked ensemble whose weights only the holdout chose)."""
    held = np.stack([period["procedures"][k]["holdout"] for k in candidates], axis=1)
    y = period["holdout"]

    def loss(z: np.ndarray) -> float:
        weights = np.exp(z - z.max())
        return float(row_losses(y, held @ (weights / weights.sum())).mean())

    z = minimize(loss, np.zeros(len(candidates)), method="Nelder-Mead").x
    weights = np.exp(z - z.max())
    refits = np.stack([period["procedures"][k]["period"] for k in candidates], axis=1)
    return refits @ (weights / weights.sum())


if __name__ == "__main__":
    if sys.argv[1:2] == ["replay"]:
        landing, out, start, end, every = sys.argv[2:7]
        plan = BacktestPlan(
            datetime.fromisoformat(start), datetime.fromisoformat(end), timedelta(days=int(every))
        )
        replay(Path(landing), Path(out), plan, grid(sys.argv[7] if len(sys.argv) > 7 else "wide"))
    elif sys.argv[1:2] == ["compare"]:
        compare(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
