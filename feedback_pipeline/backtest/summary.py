"""A backtest's summary: prequential metrics per policy and period against the labels that
arrived, the policy against each baseline on the same predictions (McNemar), the accuracy plot,
and the one MLflow run that records them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.analytics.plots import pyplot
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.metrics import mcnemar_exact
from feedback_pipeline.settings import Settings
from feedback_pipeline.warehouse.connection import transaction
from feedback_pipeline.warehouse.tables import (
    BACKTEST_PERIODS,
    BACKTEST_PREDICTIONS,
    LABELED_OUTCOMES,
)

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry

POLICY = "policy"
RETRAIN_ALWAYS = "retrain_always"
NO_RETRAIN = "no_retrain"
REFIT_EVERYTHING = "refit_everything"
POLICIES = (POLICY, NO_RETRAIN, RETRAIN_ALWAYS, REFIT_EVERYTHING)


@dataclass
class BacktestSummary:
    backtest_id: str
    overall: pd.DataFrame  # one row per policy: rows, accuracy, log loss, AUC, FP rate
    periods: pd.DataFrame  # one row per policy and period
    # one row per baseline: the policy against it on the same predictions (McNemar)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    plot_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "backtest_id": self.backtest_id,
            "overall": self.overall.to_dict(orient="records"),
            "policy_vs_baselines": self.paired.to_dict(orient="records"),
            "periods": len(self.periods),
            "plot": str(self.plot_path) if self.plot_path else None,
        }


def summarize(con: duckdb.DuckDBPyConnection, run_id: str, settings: Settings) -> BacktestSummary:
    """Prequential metrics per policy and per period, against the labels that arrived."""
    build_labeled_outcomes(con, settings.labeling, datetime(9999, 1, 1))
    scored = con.execute(
        f"""
        SELECT p.policy, p.period_start, p.prediction_id, l.label, p.probability
        FROM {BACKTEST_PREDICTIONS} p JOIN {LABELED_OUTCOMES} l USING (prediction_id)
        WHERE p.backtest_id = ?
        """,
        [run_id],
    ).df()
    threshold = settings.gate.threshold
    scored["probability"] = scored["probability"].clip(1e-7, 1 - 1e-7)
    scored["correct"] = (scored["probability"] >= threshold).astype(int) == scored["label"]
    scored["log_loss"] = -(
        scored["label"] * np.log(scored["probability"])
        + (1 - scored["label"]) * np.log(1 - scored["probability"])
    )
    scored["false_positive"] = (scored["probability"] >= threshold) & (scored["label"] == 0)
    scored["negative"] = scored["label"] == 0

    from sklearn.metrics import roc_auc_score

    def metrics(group: pd.DataFrame) -> pd.Series:
        two = group["label"].nunique() == 2
        return pd.Series(
            {
                "rows": len(group),
                "accuracy": group["correct"].mean(),
                "log_loss": group["log_loss"].mean(),
                "auc": roc_auc_score(group["label"], group["probability"]) if two else np.nan,
                "fp_rate": group["false_positive"].sum() / max(group["negative"].sum(), 1),
            }
        )

    # Baselines are compared on the periods every policy scored (a fair, common set of rows).
    common = (
        scored.groupby("period_start")["policy"].transform("nunique") == scored["policy"].nunique()
    )
    overall = scored[common].groupby("policy").apply(metrics, include_groups=False).reset_index()
    order = {name: i for i, name in enumerate(POLICIES)}
    overall = overall.sort_values("policy", key=lambda s: s.map(order)).reset_index(drop=True)
    periods = scored.groupby(["policy", "period_start"]).apply(metrics, include_groups=False)
    periods = periods.reset_index()
    overall["rows"], periods["rows"] = overall["rows"].astype(int), periods["rows"].astype(int)
    record_period_metrics(con, run_id, periods)
    return BacktestSummary(run_id, overall, periods, policy_against_baselines(scored[common]))


def record_period_metrics(
    con: duckdb.DuckDBPyConnection, run_id: str, periods: pd.DataFrame
) -> None:
    """Each period's accuracy, log loss, AUC and FP rate into ``backtest.periods``,
    on the labels known now; a later summary, with more labels, overwrites them."""
    metrics = periods[["policy", "period_start", "accuracy", "log_loss", "auc", "fp_rate"]]
    with transaction(con):
        con.register("period_metrics", metrics)
        con.execute(
            f"""UPDATE {BACKTEST_PERIODS} AS b
                SET accuracy = m.accuracy, log_loss = m.log_loss, auc = m.auc,
                    fp_rate = m.fp_rate
                FROM period_metrics m
                WHERE b.backtest_id = ? AND b.policy = m.policy
                  AND b.period_start = m.period_start""",
            [run_id],
        )
        con.unregister("period_metrics")


def policy_against_baselines(scored: pd.DataFrame) -> pd.DataFrame:
    """The policy against each baseline on the same predictions: the accuracy difference, the
    predictions only one of the two got right, and McNemar's exact p-value, so "ahead" can be
    told apart from noise (two near-identical models differ on few rows)."""
    right = scored.pivot(index="prediction_id", columns="policy", values="correct")
    rows = []
    for baseline in POLICIES[1:]:
        if POLICY not in right or baseline not in right:
            continue
        both = right[[POLICY, baseline]].dropna().astype(bool)
        only_policy, only_baseline, p_value = mcnemar_exact(both[POLICY], both[baseline])
        rows.append(
            {
                "baseline": baseline,
                "rows": len(both),
                "accuracy_difference": (only_policy - only_baseline) / max(len(both), 1),
                "only_policy_right": only_policy,
                "only_baseline_right": only_baseline,
                "mcnemar_p": p_value,
            }
        )
    return pd.DataFrame(rows)


def accuracy_plot(summary: BacktestSummary, path: Path) -> Path:
    """Accuracy per period, one line per policy."""
    figure, ax = pyplot().subplots(figsize=(9, 4))
    for policy, group in summary.periods.groupby("policy"):
        ax.plot(group["period_start"], group["accuracy"], label=policy, linewidth=1)
    ax.set(
        title=f"Prequential accuracy per period (backtest {summary.backtest_id})", ylabel="accuracy"
    )
    ax.legend(loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    summary.plot_path = path
    return path


def log_summary(
    registry: Registry, summary: BacktestSummary, start: datetime, end: datetime, every
) -> str:
    """One MLflow run in the backtest experiment: overall metrics per policy and the plot."""
    import mlflow

    with mlflow.start_run(
        experiment_id=registry.experiment_id(), run_name=f"backtest-{summary.backtest_id}"
    ) as run:
        mlflow.log_params(
            {
                "start": str(start),
                "end": str(end),
                "every": str(every),
                "backtest_id": summary.backtest_id,
            }
        )
        for row in summary.overall.itertuples():
            mlflow.log_metrics(
                {
                    f"{row.policy}_{k}": float(getattr(row, k))
                    for k in ("accuracy", "log_loss", "fp_rate", "auc")
                    if np.isfinite(getattr(row, k))
                }
            )
        for row in summary.paired.itertuples():
            mlflow.log_metric(f"policy_vs_{row.baseline}_mcnemar_p", row.mcnemar_p)
        mlflow.log_text(summary.overall.to_markdown(index=False), "backtest/summary.md")
        mlflow.log_text(summary.paired.to_markdown(index=False), "backtest/policy_vs_baselines.md")
        if summary.plot_path is not None:
            mlflow.log_artifact(str(summary.plot_path), "backtest")
        return run.info.run_id
