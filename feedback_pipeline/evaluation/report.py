"""The evaluation report: challengers and the current champion on the same holdout, the gate's
decision, logged to MLflow. A typed object, never edited after it is made."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.evaluation.plots import close, holdout_figures
from feedback_pipeline.metrics import (
    classification_metrics,
    majority_accuracy,
    paired_deltas,
    predict_probability,
)
from feedback_pipeline.progress import Progress
from feedback_pipeline.promotion.gate import (
    Decision,
    decide,
    refuse_backdated,
    refuse_contradicting_labels,
)
from feedback_pipeline.registry.mlflow_registry import CHAMPION, ModelRegistry
from feedback_pipeline.settings import GateSettings
from feedback_pipeline.training.challengers import Challenger, ChallengerRound, model_card
from feedback_pipeline.training.dataset import (
    TrainingSetError,
    TrainingSetInfo,
    load_info,
    load_split,
    selection_sample,
    split_counts,
)
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.quarantine import ContradictingWeek, contradicting_weeks
from feedback_pipeline.warehouse.summaries import markdown


class StaleChallengersError(ValueError):
    """The challengers were trained on another training set than the one now in the warehouse."""


@dataclass(frozen=True)
class ScoredChallenger:
    challenger: Challenger
    holdout: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.challenger.family} v{self.challenger.version}"


@dataclass(frozen=True)
class EvaluationReport:
    as_of: datetime
    training_set_hash: str
    features: list[str]
    holdout_rows: int
    fair_rows: int  # holdout rows newer than the champion's data watermark (all, without one)
    majority_accuracy: float
    challengers: tuple[ScoredChallenger, ...]
    best: ScoredChallenger  # chosen on validation, never on the holdout
    champion_version: str | None
    champion_metrics: dict[str, float] | None  # the live champion, on rows newer than it
    # the champion's procedure (family, params) and its fit on this train split, scored on the
    # holdout: what the gate compares against, and what a refresh refits
    champion_procedure: dict[str, Any] | None
    champion_procedure_metrics: dict[str, float] | None
    deltas: dict[str, dict[str, float]] | None
    decision: Decision
    gate: GateSettings
    # weeks of labels the champion never trained on that it ranks backwards (quarantined)
    contradicting_weeks: tuple[ContradictingWeek, ...] = ()

    @property
    def mode(self) -> str:
        return self.gate.mode

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``evaluation/report.json``."""
        return {
            "as_of": str(self.as_of),
            "training_set_hash": self.training_set_hash,
            "features": self.features,
            "holdout_rows": self.holdout_rows,
            "fair_rows": self.fair_rows,
            "majority_accuracy": self.majority_accuracy,
            "challengers": [
                {**asdict(s.challenger), "as_of": str(s.challenger.as_of), "holdout": s.holdout}
                for s in self.challengers
            ],
            "best_version": self.best.challenger.version,
            "champion_version": self.champion_version,
            "champion_metrics": self.champion_metrics,
            "champion_procedure": self.champion_procedure,
            "champion_procedure_metrics": self.champion_procedure_metrics,
            "deltas": self.deltas,
            "decision": self.decision.as_dict(),
            "mode": self.mode,
            "gate": self.gate.model_dump(),
            "contradicting_weeks": [w.as_dict() for w in self.contradicting_weeks],
        }

    def tables(self) -> dict[str, str]:
        """The report's parts as markdown: holdout metrics, deltas, decision."""
        rows = [{"model": s.label, **s.holdout} for s in self.challengers]
        if self.champion_metrics:
            rows.insert(
                0,
                {
                    "model": f"champion v{self.champion_version} ({self.fair_rows} rows)",
                    **self.champion_metrics,
                },
            )
        if self.champion_procedure_metrics:
            rows.insert(
                0,
                {
                    "model": f"champion v{self.champion_version}'s procedure, this train split",
                    **self.champion_procedure_metrics,
                },
            )
        deltas = [{"metric": m, **d} for m, d in (self.deltas or {}).items()]
        verdict = (
            "PROMOTE"
            if self.decision.promote
            else "REFRESH THE CHAMPION'S PROCEDURE"
            if self.decision.refresh
            else "KEEP CHAMPION"
        )
        dry = " (dry run: nothing moves)" if self.mode == "dry_run" else ""
        return {
            "holdout_metrics": f"Holdout: {self.holdout_rows} matured outcome/explicit rows, "
            f"unweighted; {self.fair_rows} of them are newer than the champion's data watermark "
            "(the champion and the deltas are scored on those only). Best challenger on "
            f"validation: v{self.best.challenger.version}. "
            f"Majority-class accuracy {self.majority_accuracy:.4f}.\n\n" + markdown(rows),
            "deltas": f"Challenger minus champion, with {self.gate.confidence_level:.0%} "
            "intervals (paired bootstrap for accuracy and weighted F1, DeLong for AUC).\n\n"
            + markdown(deltas),
            "decision": f"**{verdict}**{dry}: {self.decision.reason}",
        }

    def markdown(self) -> str:
        tables = self.tables()
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
    registry: ModelRegistry,
    round_: ChallengerRound,
    gate: GateSettings,
    seed: int,
    progress: Progress = print,
) -> EvaluationReport:
    """Score the challengers and the current champion on the same holdout and decide.

    The holdout comes from the set the challengers were trained on (by its hash), never from
    a set another run built since; fails when that set is gone."""
    try:  # the set the challengers were trained on, never a newer one another run built
        info = replace(load_info(con, round_.training_set_hash), as_of=round_.as_of)
    except TrainingSetError as error:
        raise StaleChallengersError(
            f"challengers were trained on training set {round_.training_set_hash} (as of "
            f"{round_.as_of}): {error}"
        ) from None
    holdout = load_split(con, "holdout", info.features, info.content_hash)
    champion_version = registry.alias_version(CHAMPION)  # raises if MLflow is unreachable
    scorable = len(holdout) > 0
    probabilities: dict[str, np.ndarray] = {}
    scored = []
    for challenger in round_.challengers:
        p = (
            registry.predict_probability(challenger.version, holdout.X).to_numpy()
            if scorable
            else np.array([])
        )
        metrics = classification_metrics(holdout.y, p, gate.threshold) if scorable else {}
        scored.append(ScoredChallenger(challenger, metrics))
        probabilities[scored[-1].label] = p
        registry.log_metrics(challenger.run_id, {f"holdout_{k}": v for k, v in metrics.items()})
    best = next(s for s in scored if s.challenger == round_.best)
    champion_metrics = deltas = procedure_metrics = None
    fair_rows = len(holdout)
    majority = majority_accuracy(holdout.y)
    tags = registry.version_tags(champion_version) if champion_version and scorable else None
    procedure = json.loads(tags["procedure"]) if tags and tags.get("procedure") else None
    if tags is not None:
        # The live champion is judged only on holdout rows labeled after its data watermark,
        # rows it never trained on (a refit champion has seen the older holdout rows).
        watermark = tags.get("data_watermark")
        fair = (
            holdout.labeled_at > np.datetime64(watermark, "us")
            if watermark and watermark != "None"
            else np.ones(len(holdout), dtype=bool)
        )
        fair_rows = int(fair.sum())
        fair_note = f"champion v{champion_version}'s data watermark {watermark}"
        progress(f"{fair_rows} of {len(holdout)} holdout rows are newer than {fair_note}")
        if fair_rows > 0:
            subset = holdout.subset(fair)
            p_champion = registry.predict_probability(champion_version, subset.X).to_numpy()
            champion_metrics = classification_metrics(subset.y, p_champion, gate.threshold)
    if procedure is not None:
        # Like with like: the champion's procedure (family, parameters, half-life) fit on this
        # train split, so both procedures are judged on holdout rows neither has seen. The live
        # champion, a refit on fresher rows, is only reported on the rows newer than it.
        same = next(
            (
                s
                for s in scored
                if {"family": s.challenger.family, "params": s.challenger.params} == procedure
            ),
            None,
        )
        if same is not None:  # a challenger is the champion's procedure on this split: reuse it
            p_procedure = probabilities[same.label]
        else:
            train = selection_sample(  # the rows the challengers were fit on
                load_split(con, "train", info.features, info.content_hash),
                round_.selection_rows,
                round_.seed,
            )
            fitted = fit(procedure["family"], procedure["params"], train, seed)
            p_procedure = predict_probability(fitted, holdout.X)
            probabilities[f"champion v{champion_version}'s procedure"] = p_procedure
        procedure_metrics = classification_metrics(holdout.y, p_procedure, gate.threshold)
        deltas = _deltas(holdout.y, probabilities[best.label], p_procedure, gate, seed)
        decision = decide(
            gate,
            len(holdout),
            best.holdout,
            procedure_metrics,
            deltas,
            majority,
            procedure_compared=True,
        )
    elif tags is not None and fair_rows >= gate.min_holdout_rows:
        # A champion registered before procedures were recorded: compare on the fair rows.
        p_best = probabilities[best.label][fair]
        compared = classification_metrics(subset.y, p_best, gate.threshold)
        majority = majority_accuracy(subset.y)
        deltas = _deltas(subset.y, p_best, p_champion, gate, seed)
        decision = decide(
            gate, fair_rows, compared, champion_metrics, deltas, majority, fair_rows, fair_note
        )
    elif tags is not None:  # too few fair rows: gate.small_fair_holdout decides
        decision = decide(
            gate, len(holdout), best.holdout, None, None, majority, fair_rows, fair_note
        )
    else:
        decision = decide(gate, len(holdout), best.holdout, None, None, majority)
    champion_tags = tags
    if champion_tags is None and champion_version:  # an empty holdout: still never backdated
        champion_tags = registry.version_tags(champion_version)
    contradicting = _audit_labels(con, registry, info, gate, champion_version, champion_tags)
    if contradicting:
        weeks = "; ".join(week.describe() for week in contradicting)
        progress(f"labels contradict champion v{champion_version}: {weeks}")
        decision = refuse_contradicting_labels(gate, decision, weeks)
    backdated = _backdated(info, champion_version, champion_tags)
    if backdated is not None:
        decision = refuse_backdated(gate, decision, backdated)
    progress(f"decision: {decision.reason}")
    report = EvaluationReport(
        as_of=info.as_of,
        training_set_hash=info.content_hash,
        features=info.features,
        holdout_rows=len(holdout),
        fair_rows=fair_rows,
        majority_accuracy=majority,
        challengers=tuple(scored),
        best=best,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
        champion_procedure=procedure,
        champion_procedure_metrics=procedure_metrics,
        deltas=deltas,
        decision=decision,
        gate=gate,
        contradicting_weeks=tuple(contradicting),
    )
    _log(registry, report, info, split_counts(con, info.content_hash), holdout.y, probabilities)
    return report


def _audit_labels(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    info: TrainingSetInfo,
    gate: GateSettings,
    champion_version: str | None,
    tags: dict[str, str] | None,
) -> list[ContradictingWeek]:
    """The weeks of feedback labels newer than the champion's data watermark (every split:
    labels it never trained on) that it ranks backwards; none with the gate off."""
    watermark = (tags or {}).get("data_watermark")
    if not gate.quarantine_labels or gate.mode == "always" or not watermark or watermark == "None":
        return []
    rows = load_split(
        con,
        ("train", "validation", "holdout", "refit_only"),
        info.features,
        info.content_hash,
        feedback_labeled_after=datetime.fromisoformat(watermark),
    )
    if len(rows) < gate.quarantine_min_rows:
        return []
    p = registry.predict_probability(champion_version, rows.X).to_numpy()
    return contradicting_weeks(
        rows.event_time, rows.y, p, gate.quarantine_min_rows, gate.quarantine_max_p
    )


def _backdated(
    info: TrainingSetInfo, champion_version: str | None, tags: dict[str, str] | None
) -> str | None:
    """Why this run's data is older than the champion's, or None when it is not."""
    watermark = (tags or {}).get("data_watermark")
    if not watermark or watermark == "None" or info.data_clock is None:
        return None
    if np.datetime64(info.data_clock, "us") >= np.datetime64(watermark, "us"):
        return None
    return (
        f"this run's newest label ({info.data_clock}, as of {info.as_of}) is older than "
        f"champion v{champion_version}'s data watermark ({watermark})"
    )


def _deltas(
    y: np.ndarray, p_challenger: np.ndarray, p_champion: np.ndarray, gate: GateSettings, seed: int
) -> dict[str, dict[str, float]]:
    return paired_deltas(
        y,
        p_challenger,
        p_champion,
        gate.threshold,
        gate.bootstrap_samples,
        gate.confidence_level,
        seed,
    )


def _log(
    registry: ModelRegistry,
    report: EvaluationReport,
    info: TrainingSetInfo,
    counts: pd.DataFrame,
    y: np.ndarray,
    probabilities: dict[str, np.ndarray],
) -> None:
    """Model cards that now tell the holdout and the decision; the report and plots on the best
    challenger's run. A lean registry (a backtest's) skips them: nobody reads them there."""
    if registry.lean:
        return
    best = report.best.challenger
    for scored in report.challengers:
        challenger = scored.challenger
        role = (
            "the best challenger on validation"
            if challenger == best
            else f"not the best challenger on validation (v{best.version} is)"
        )
        registry.log_text(
            challenger.run_id,
            model_card(
                challenger.family,
                challenger.params,
                info,
                counts,
                challenger.validation,
                "## Holdout metrics (unweighted)\n\n"
                + markdown([scored.holdout])
                + f"\n\n## Decision\n\nThis version is {role}. {report.decision.reason}",
                challenger.rows_fit,
            ),
            "model_card.md",
        )
    figures = holdout_figures(y, probabilities) if len(set(y.tolist())) == 2 else {}
    registry.log_report(
        best.run_id,
        json.dumps(report.as_dict(), indent=2, default=str),
        report.markdown(),
        figures,
    )
    close(figures)
