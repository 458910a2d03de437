"""The evaluation report: what the holdout measured (``evaluation.report``) with the gate's
decision on it, logged to MLflow. A typed object, never edited after it is made."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb

from feedback_pipeline.evaluation.plots import close, holdout_figures
from feedback_pipeline.evaluation.report import Evaluation, ScoredChallenger, evaluate
from feedback_pipeline.progress import Progress
from feedback_pipeline.promotion.gate import (
    Decision,
    decide,
    refuse_backdated,
    refuse_contradicting_labels,
)
from feedback_pipeline.registry.model_registry import ModelRegistry
from feedback_pipeline.settings import GateSettings
from feedback_pipeline.training.challengers import ChallengerRound, model_card
from feedback_pipeline.training.quarantine import ContradictingWeek
from feedback_pipeline.warehouse.summaries import markdown


@dataclass(frozen=True)
class EvaluationReport:
    """What the ``evaluation_report`` asset stores and every later step reads: the measured
    fields of an ``Evaluation`` and the gate's decision on them. It copies those fields rather
    than holding the ``Evaluation``, whose holdout arrays only the plots and model cards need and
    which would otherwise be pickled with every run's asset value."""

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
    # weeks whose contradiction lasted: a new concept; applying the decision releases them
    persisting_weeks: tuple[datetime, ...] = ()

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
            "persisting_weeks": [w.isoformat() for w in self.persisting_weeks],
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


def evaluate_and_judge(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    round_: ChallengerRound,
    gate: GateSettings,
    seed: int,
    progress: Progress = print,
) -> EvaluationReport:
    """Both steps at once: ``evaluation.report.evaluate``, then ``judge``.

    Args:
        con: the warehouse, holding the training set the challengers were trained on.
        registry: where the challengers and the champion are, and where the report is logged.
        round_: the challengers to evaluate.
        gate: the gate's settings, for the measurement and for the decision.
        seed: for the refit of the champion's procedure and the bootstrap.
        progress: where the progress lines go.

    Returns:
        The report with the gate's decision, logged to the registry."""
    return judge(registry, evaluate(con, registry, round_, gate, seed, progress), gate, progress)


def judge(
    registry: ModelRegistry,
    evaluation: Evaluation,
    gate: GateSettings,
    progress: Progress = print,
) -> EvaluationReport:
    """The gate's decision on what the holdout measured, in order: the gate's rule on the
    comparison, then the refusals for labels that contradict the champion and for data older
    than the champion's; then the report, logged to MLflow."""
    compared = evaluation.comparison
    decision = decide(
        gate,
        compared.holdout_rows,
        compared.challenger,
        compared.champion,
        evaluation.deltas,
        compared.fair_rows,
        compared.fair_note,
        procedure_compared=compared.procedure_compared,
        live_champion=evaluation.champion_metrics,
    )
    if evaluation.contradicting_weeks:
        weeks = "; ".join(week.describe() for week in evaluation.contradicting_weeks)
        decision = refuse_contradicting_labels(gate, decision, weeks)
    if evaluation.backdated is not None:
        decision = refuse_backdated(gate, decision, evaluation.backdated)
    progress(f"decision: {decision.reason}")
    info = evaluation.training_set
    report = EvaluationReport(
        as_of=info.as_of,
        training_set_hash=info.content_hash,
        features=info.features,
        holdout_rows=evaluation.holdout_rows,
        fair_rows=evaluation.fair_rows,
        majority_accuracy=evaluation.majority_accuracy,
        challengers=evaluation.challengers,
        best=evaluation.best,
        champion_version=evaluation.champion_version,
        champion_metrics=evaluation.champion_metrics,
        champion_procedure=evaluation.champion_procedure,
        champion_procedure_metrics=evaluation.champion_procedure_metrics,
        deltas=evaluation.deltas,
        decision=decision,
        gate=gate,
        contradicting_weeks=evaluation.contradicting_weeks,
        persisting_weeks=evaluation.persisting_weeks,
    )
    _log(registry, report, evaluation)
    return report


def _log(registry: ModelRegistry, report: EvaluationReport, evaluation: Evaluation) -> None:
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
                evaluation.training_set,
                evaluation.split_counts,
                challenger.validation,
                "## Holdout metrics (unweighted)\n\n"
                + markdown([scored.holdout])
                + f"\n\n## Decision\n\nThis version is {role}. {report.decision.reason}",
                challenger.rows_fit,
            ),
            "model_card.md",
        )
    y = evaluation.holdout_y
    figures = holdout_figures(y, evaluation.probabilities) if len(set(y.tolist())) == 2 else {}
    registry.log_report(
        best.run_id,
        json.dumps(report.as_dict(), indent=2, default=str),
        report.markdown(),
        figures,
    )
    close(figures)
