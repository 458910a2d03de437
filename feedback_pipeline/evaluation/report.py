"""What the holdout measured: the challengers, the current champion and its procedure on the same
holdout, the deltas, and what the label audit and the data watermark found against the champion.
No decision here: ``promotion.judge`` puts the gate's decision on it and logs the report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.metrics import (
    classification_metrics,
    majority_accuracy,
    paired_deltas,
    predict_probability,
)
from feedback_pipeline.progress import Progress
from feedback_pipeline.registry.model_registry import CHAMPION, ModelRegistry
from feedback_pipeline.settings import GateSettings
from feedback_pipeline.training.challengers import Challenger, ChallengerRound
from feedback_pipeline.training.dataset import (
    TrainingSetError,
    TrainingSetInfo,
    load_info,
    split_counts,
)
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.quarantine import (
    ContradictingWeek,
    contradicting_weeks,
    persisting_weeks,
    quarantined_weeks,
)
from feedback_pipeline.training.splits import load_split, selection_sample


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
class Comparison:
    """The comparison the gate judges, as measured: the best challenger against the champion's
    procedure fit on this train split, against the live champion on the rows newer than it, or
    alone (no champion, or too few such rows)."""

    holdout_rows: int  # the rows both sides are scored on
    challenger: dict[str, float]
    champion: dict[str, float] | None  # None: the challenger is judged alone
    # the live champion is judged on the rows newer than its data watermark (``fair_note``
    # names both); None when it is not (no champion, or its procedure is compared)
    fair_rows: int | None = None
    fair_note: str = ""
    procedure_compared: bool = False  # ``champion`` is its procedure on this train split


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on the holdout, and no decision. Never edited after it is made."""

    training_set: TrainingSetInfo  # the set the challengers were trained on, as of their round
    holdout_rows: int
    fair_rows: int  # holdout rows newer than the champion's data watermark (all, without one)
    majority_accuracy: float  # on the rows the comparison stands on
    challengers: tuple[ScoredChallenger, ...]
    best: ScoredChallenger  # chosen on validation, never on the holdout
    champion_version: str | None
    champion_metrics: dict[str, float] | None  # the live champion, on rows newer than it
    # the champion's procedure (family, params) and its fit on this train split, scored on the
    # holdout: what the gate compares against, and what a refresh refits
    champion_procedure: dict[str, Any] | None
    champion_procedure_metrics: dict[str, float] | None
    deltas: dict[str, dict[str, float]] | None  # the challenger minus the compared champion
    comparison: Comparison
    # weeks of labels the champion never trained on that it ranks backwards (to quarantine)
    contradicting_weeks: tuple[ContradictingWeek, ...]
    # a contradiction that lasted longer than gate.quarantine_max_weeks: its weeks (found now
    # or quarantined before) are a new concept, to be released and trained on
    persisting_weeks: tuple[datetime, ...]
    backdated: str | None  # why this run's data is older than the champion's, or None
    # what the model cards and plots logged with the decision are made of; not in the report
    split_counts: pd.DataFrame = field(repr=False, compare=False)
    holdout_y: np.ndarray = field(repr=False, compare=False)
    probabilities: dict[str, np.ndarray] = field(repr=False, compare=False)


def evaluate(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    round_: ChallengerRound,
    gate: GateSettings,
    seed: int,
    progress: Progress = print,
) -> Evaluation:
    """Score the challengers and the current champion on the same holdout; decide nothing.

    The holdout comes from the set the challengers were trained on (by its hash), never from
    a set another run built since; fails when that set is gone. Each challenger's holdout
    metrics are logged on its run; the report with the decision is logged by
    ``promotion.judge``.

    Args:
        con: the warehouse, holding the training set the challengers were trained on.
        registry: where the challengers and the champion are (MLflow, or a backtest's replay).
        round_: the challengers, the best on validation and the set they were fit on.
        gate: the threshold, bootstrap and label-audit settings (and ``min_holdout_rows``,
            below which a champion without a recorded procedure is not compared).
        seed: for the refit of the champion's procedure and the bootstrap.
        progress: where the progress lines go.

    Returns:
        The measured evaluation: scored challengers, champion and procedure metrics, deltas,
        the comparison the gate judges, contradicting label weeks and any backdating.

    Raises:
        StaleChallengersError: the challengers' training set is no longer in the warehouse."""
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
        comparison = Comparison(
            len(holdout), best.holdout, procedure_metrics, procedure_compared=True
        )
    elif tags is not None and fair_rows >= gate.min_holdout_rows:
        # A champion registered before procedures were recorded: compare on the fair rows.
        p_best = probabilities[best.label][fair]
        compared = classification_metrics(subset.y, p_best, gate.threshold)
        majority = majority_accuracy(subset.y)
        deltas = _deltas(subset.y, p_best, p_champion, gate, seed)
        comparison = Comparison(fair_rows, compared, champion_metrics, fair_rows, fair_note)
    elif tags is not None:  # too few fair rows: gate.small_fair_holdout decides
        comparison = Comparison(len(holdout), best.holdout, None, fair_rows, fair_note)
    else:
        comparison = Comparison(len(holdout), best.holdout, None)
    champion_tags = tags
    if champion_tags is None and champion_version:  # an empty holdout: still never backdated
        champion_tags = registry.version_tags(champion_version)
    found = _audit_labels(con, registry, info, gate, champion_version, champion_tags)
    persisting = (
        persisting_weeks(
            found,
            quarantined_weeks(con, registry.model_name, info.as_of),
            gate.quarantine_max_weeks,
        )
        if found
        else []
    )
    contradicting = [week for week in found if week.week_start not in persisting]
    if found:
        weeks = "; ".join(week.describe() for week in found)
        progress(f"labels contradict champion v{champion_version}: {weeks}")
    if persisting:
        progress(
            f"the contradiction has lasted {len(persisting)} consecutive weeks (more than "
            f"gate.quarantine_max_weeks={gate.quarantine_max_weeks}): a new concept, not a "
            "broken feed; those weeks are trained on"
        )
    return Evaluation(
        training_set=info,
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
        comparison=comparison,
        contradicting_weeks=tuple(contradicting),
        persisting_weeks=tuple(persisting),
        backdated=_backdated(info, champion_version, champion_tags),
        split_counts=split_counts(con, info.content_hash),
        holdout_y=holdout.y,
        probabilities=probabilities,
    )


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
