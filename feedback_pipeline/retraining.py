"""The retrain loop without Dagster: challengers -> evaluation report -> champion decision.

Assets in ``feedback_pipeline.assets.retraining`` are thin wrappers around these functions;
the CLI's ``rollback`` and ``promote`` use them too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import matplotlib
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from feedback_pipeline import ledger
from feedback_pipeline.evaluation import (
    bootstrap_deltas,
    classification_metrics,
    majority_accuracy,
)
from feedback_pipeline.promotion import Decision, decide
from feedback_pipeline.registry import CHALLENGER, CHAMPION, Registry
from feedback_pipeline.reporting import markdown
from feedback_pipeline.settings import GateSettings, Settings
from feedback_pipeline.training import dask_client, train_family
from feedback_pipeline.training_set import Split, load_info, load_split

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

Progress = Callable[[str], None]


def model_card(
    family: str,
    params: dict,
    info: dict,
    counts: pd.DataFrame,
    validation: dict[str, float],
    extra: str = "",
) -> str:
    return "\n\n".join(
        [
            f"# feedback_model challenger: {family}",
            f"Data window: {info['window_start']} .. {info['as_of']} (as_of), training-set hash "
            f"`{info['content_hash']}`, data watermark {info['data_watermark']}.",
            f"Features: {', '.join(info['features'])}",
            "## Hyperparameters\n\n" + markdown([params]),
            "## Rows per split and source\n\n" + markdown(counts),
            "## Validation metrics (weighted)\n\n" + markdown([validation]),
            extra,
        ]
    )


def split_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        "SELECT split, source, count(*) AS rows FROM training.training_set GROUP BY ALL "
        "ORDER BY ALL"
    ).df()


@dataclass(frozen=True)
class TrainingData:
    """The current training set, loaded once per round."""

    info: dict[str, Any]
    train: Split
    validation: Split
    counts: pd.DataFrame


def train_challengers(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    settings: Settings,
    families: list[str],
    search: bool,
    tags: dict[str, str],
    progress: Progress = print,
) -> list[dict[str, Any]]:
    """Fit one challenger per family on `train`, pick hyperparameters on `validation`,
    log each as an MLflow run and register it as a new version of `feedback_model`.

    A fit on the same training set with the same parameters reuses its earlier version, so a
    retrain on unchanged data creates no version and moves no alias. With `models.engine: dask`
    XGBoost trains on a Dask cluster and is registered exactly like a local one."""
    info = load_info(con)
    data = TrainingData(
        info,
        load_split(con, "train", info["features"]),
        load_split(con, "validation", info["features"]),
        split_counts(con),
    )
    if len(data.train) == 0 or len(data.validation) == 0:
        raise ValueError(
            f"training set too small: {len(data.train)} train and {len(data.validation)} "
            f"validation rows in the window {info['window_start']} .. {info['as_of']} (as_of): "
            "is as_of right for this data, and lookback_days wide enough?"
        )
    registry.start_package_scan()  # MLflow's one-time set-up runs while the models fit
    budget = settings.models.search_budget if search else 1
    engine = (
        dask_client(settings.models.dask_scheduler)
        if settings.models.engine == "dask"
        else contextlib.nullcontext()
    )
    with engine as client:
        if client is not None:
            progress(f"training XGBoost on Dask, scheduler {client.scheduler.address}")
        return [
            _train_and_register(registry, settings, family, budget, tags, data, client, progress)
            for family in families
        ]


def _train_and_register(
    registry: Registry,
    settings: Settings,
    family: str,
    budget: int,
    tags: dict[str, str],
    data: TrainingData,
    client: Any,
    progress: Progress,
) -> dict[str, Any]:
    """One family: fit (and search), then register a new version or reuse an identical one."""
    info, features = data.info, data.info["features"]
    progress(f"training {family} on {len(data.train):,} rows ({budget} candidate(s))")
    fitted = train_family(
        family,
        settings.models.hyperparameters.get(family, {}),
        data.train,
        data.validation,
        settings.models.seed,
        budget,
        settings.gate.threshold,
        client,
    )
    params = {
        "family": family,
        **fitted.params,
        "outcome_weight": settings.training.outcome_weight,
        "lookback_days": info["settings"]["lookback_days"],
        "use_outcomes": info["settings"]["use_outcomes"],
        "as_of": str(info["as_of"]),
        "seed": settings.models.seed,
        "candidates_tried": fitted.candidates_tried,
        "engine": "dask" if client is not None and family == "xgboost" else "local",
    }
    metrics = {f"validation_{k}": v for k, v in fitted.validation_metrics.items()}
    metrics.update({"rows_train": len(data.train), "rows_validation": len(data.validation)})
    fit_key = hashlib.md5(
        json.dumps([info["content_hash"], params], sort_keys=True, default=str).encode()
    ).hexdigest()
    version_tags = {
        **tags,
        "as_of": str(info["as_of"]),
        "training_set_hash": info["content_hash"],
        "data_watermark": str(info["data_watermark"]),
        "features": json.dumps(features),
        "fit_key": fit_key,
    }
    registered = registry.find_version("fit_key", fit_key)
    if registered is not None:  # same data, same settings: the same model, not a new one
        progress(f"{family}: unchanged data and settings, reusing version {registered.version}")
    else:
        card = model_card(family, fitted.params, info, data.counts, fitted.validation_metrics)
        registered = registry.log_challenger(
            fitted.estimator,
            family,
            features,
            data.validation.X,
            params,
            metrics,
            version_tags,
            card,
        )
        progress(
            f"{family}: registered version {registered.version} "
            f"(validation log loss {fitted.validation_metrics['log_loss']:.4f})"
        )
    return {
        "version": registered.version,
        "run_id": registered.run_id,
        "family": family,
        "params": fitted.params,
        "validation": fitted.validation_metrics,
    }


def _figures(y: np.ndarray, probabilities: dict[str, np.ndarray]) -> dict[str, Any]:
    roc, ax = plt.subplots(figsize=(5, 5))
    for label, p in probabilities.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on holdout")
    ax.legend(loc="lower right")
    calibration, ax = plt.subplots(figsize=(5, 5))
    bins = np.linspace(0, 1, 11)
    for label, p in probabilities.items():
        which = np.clip(np.digitize(p, bins) - 1, 0, 9)
        counts = np.bincount(which, minlength=10)
        seen = counts > 0
        mean_p = np.bincount(which, weights=p, minlength=10)[seen] / counts[seen]
        rate = np.bincount(which, weights=y, minlength=10)[seen] / counts[seen]
        ax.plot(mean_p, rate, marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    return {"roc": roc, "calibration": calibration}


def report_tables(report: dict) -> dict[str, str]:
    """The report's parts as markdown: holdout metrics, deltas, decision."""
    rows = [
        {"model": f"{c['family']} v{c['version']}", **c["holdout"]} for c in report["challengers"]
    ]
    if report["champion_metrics"]:
        rows.insert(
            0, {"model": f"champion v{report['champion_version']}", **report["champion_metrics"]}
        )
    deltas = [{"metric": m, **d} for m, d in (report["deltas"] or {}).items()]
    decision = report["decision"]
    verdict = "PROMOTE" if decision["promote"] else "KEEP CHAMPION"
    dry = " (dry run: nothing moves)" if report["mode"] == "dry_run" else ""
    return {
        "holdout_metrics": f"Holdout: {report['holdout_rows']} matured outcome/explicit rows, "
        f"unweighted. Best challenger on validation: v{report['best_version']}. Majority-class "
        f"accuracy {report['majority_accuracy']:.4f}.\n\n" + markdown(rows),
        "deltas": "Challenger minus champion, with bootstrap "
        f"{report['gate']['confidence_level']:.0%} intervals.\n\n" + markdown(deltas),
        "decision": f"**{verdict}**{dry}: {decision['reason']}",
    }


def report_markdown(report: dict) -> str:
    tables = report_tables(report)
    return "\n\n".join(
        [
            "## Champion vs challengers on the holdout",
            tables["holdout_metrics"],
            "## Deltas",
            tables["deltas"],
            "## Decision",
            tables["decision"],
        ]
    )


def evaluate(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    challengers: list[dict[str, Any]],
    gate: GateSettings,
    seed: int,
    progress: Progress = print,
) -> dict[str, Any]:
    """Score the challengers and the current champion on the same holdout and decide."""
    info = load_info(con)
    holdout = load_split(con, "holdout", info["features"])
    best = min(challengers, key=lambda c: c["validation"]["log_loss"])
    champion_version = registry.alias_version(CHAMPION)
    scorable = len(holdout) > 0
    probabilities: dict[str, np.ndarray] = {}
    for challenger in challengers:
        p = (
            registry.predict_probability(challenger["version"], holdout.X).to_numpy()
            if scorable
            else np.array([])
        )
        probabilities[f"{challenger['family']} v{challenger['version']}"] = p
        challenger["holdout"] = (
            classification_metrics(holdout.y, p, gate.threshold) if scorable else {}
        )
        registry.log_metrics(
            challenger["run_id"], {f"holdout_{k}": v for k, v in challenger["holdout"].items()}
        )
    champion_metrics = deltas = None
    if champion_version is not None and scorable:
        p_champion = registry.predict_probability(champion_version, holdout.X).to_numpy()
        probabilities[f"champion v{champion_version}"] = p_champion
        champion_metrics = classification_metrics(holdout.y, p_champion, gate.threshold)
        p_best = probabilities[f"{best['family']} v{best['version']}"]
        deltas = bootstrap_deltas(
            holdout.y,
            p_best,
            p_champion,
            gate.threshold,
            gate.bootstrap_samples,
            gate.confidence_level,
            seed,
        )
    decision: Decision = (
        decide(
            gate,
            len(holdout),
            best.get("holdout", {}),
            champion_metrics if champion_version is not None else None,
            deltas,
            majority_accuracy(holdout.y),
        )
        if scorable
        else decide(gate, 0, {}, None, None, float("nan"))
    )
    progress(f"decision: {decision.reason}")
    report = {
        "as_of": str(info["as_of"]),
        "training_set_hash": info["content_hash"],
        "features": info["features"],
        "holdout_rows": len(holdout),
        "majority_accuracy": majority_accuracy(holdout.y) if scorable else float("nan"),
        "challengers": challengers,
        "best_version": best["version"],
        "best_run_id": best["run_id"],
        "champion_version": champion_version,
        "champion_metrics": champion_metrics,
        "deltas": deltas,
        "decision": decision.as_dict(),
        "mode": gate.mode,
        "gate": gate.model_dump(),
    }
    counts = split_counts(con)
    for challenger in challengers:  # the model card now also tells the holdout and the decision
        role = (
            "the best challenger on validation"
            if challenger is best
            else f"not the best challenger on validation (v{best['version']} is)"
        )
        registry.log_text(
            challenger["run_id"],
            model_card(
                challenger["family"],
                challenger["params"],
                info,
                counts,
                challenger["validation"],
                "## Holdout metrics (unweighted)\n\n"
                + markdown([challenger["holdout"]])
                + f"\n\n## Decision\n\nThis version is {role}. {decision.reason}",
            ),
            "model_card.md",
        )
    report_md = report_markdown(report)
    figures = _figures(holdout.y, probabilities) if scorable and len(set(holdout.y)) == 2 else {}
    registry.log_report(best["run_id"], report, report_md, figures)
    for figure in figures.values():
        plt.close(figure)
    report["markdown"] = report_md
    return report


def apply_decision(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    report: dict[str, Any],
    trigger: str,
    dagster_run_id: str | None,
) -> dict[str, Any]:
    """Move the aliases as decided and append the decision to the ledger, promoted or not."""
    decision = report["decision"]
    old = registry.alias_version(CHAMPION)
    best = report["best_version"]
    now = datetime.now().isoformat(timespec="seconds")
    if report["mode"] == "enforce":
        registry.set_alias(CHALLENGER, best)
    if decision["applied"]:
        registry.set_alias(CHAMPION, best)
        registry.tag_version(best, "promoted_at", now)
        if old is not None and old != best:
            registry.tag_version(old, "retired_at", now)
            registry.tag_version(old, "replaced_by", best)
    new = best if decision["applied"] else old
    best_metrics = next(c["holdout"] for c in report["challengers"] if c["version"] == best)
    ledger.append_event(
        con,
        "retrain",
        decision["reason"],
        bool(decision["applied"]),
        old,
        new,
        trigger=trigger,
        as_of=datetime.fromisoformat(report["as_of"]),
        challenger_version=best,
        mode=report["mode"],
        metrics={"challenger": best_metrics, "champion": report["champion_metrics"]},
        deltas=report["deltas"],
        dagster_run_id=dagster_run_id,
    )
    return {
        "old_version": old,
        "new_version": new,
        "promoted": bool(decision["applied"]),
        "reason": decision["reason"],
    }


def rollback(
    con: duckdb.DuckDBPyConnection, registry: Registry, reason: str, to_version: str | None = None
) -> tuple[str | None, str]:
    """Point ``champion`` back at the previous champion (or ``to_version``); ledger it."""
    current = registry.alias_version(CHAMPION)
    if to_version is None:
        previous = con.execute(
            f"""SELECT old_version FROM {ledger.LEDGER}
                WHERE new_version = ? AND old_version IS NOT NULL AND old_version <> new_version
                ORDER BY recorded_at DESC LIMIT 1""",
            [current],
        ).fetchall()
        if not previous:
            raise ValueError(
                f"no previous champion recorded before version {current}; pass --to VERSION"
            )
        to_version = previous[0][0]
    return _move_champion(con, registry, to_version, reason, "rollback", current)


def force_promote(
    con: duckdb.DuckDBPyConnection, registry: Registry, version: str, reason: str
) -> tuple[str | None, str]:
    return _move_champion(
        con, registry, version, reason, "forced_promotion", registry.alias_version(CHAMPION)
    )


def _move_champion(con, registry, version, reason, action, current):
    if not reason or not reason.strip():
        raise ValueError("--reason is required")
    if str(version) not in registry.versions():
        raise ValueError(f"feedback_model has no version {version}")
    registry.set_alias(CHAMPION, str(version))
    registry.tag_version(str(version), "promoted_at", datetime.now().isoformat(timespec="seconds"))
    ledger.append_event(con, action, reason, True, current, str(version), trigger="cli")
    return current, str(version)
