"""The retrain, in order, written once: labels -> training set -> challengers -> evaluation ->
the decision applied.

The Dagster assets run these same steps, one asset each and in this order
(``defs/assets/labels.py``, ``training.py``, ``evaluation.py``); the backtest and the tests call
the functions here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.progress import Progress
from feedback_pipeline.promotion.apply import ChampionChange, apply_decision
from feedback_pipeline.promotion.judge import EvaluationReport, evaluate_and_judge
from feedback_pipeline.registry.model_registry import ModelRegistry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import ChallengerRound, train_challengers
from feedback_pipeline.training.dataset import (
    TrainingSetInfo,
    TrainingSetSummary,
    build_training_set,
    discover_features,
)
from feedback_pipeline.training.quarantine import quarantined_weeks


@dataclass(frozen=True)
class RetrainResult:
    """What each step handed on: the challengers, the report (with the decision) and the
    change it made."""

    round: ChallengerRound
    report: EvaluationReport
    change: ChampionChange


def training_set_as_of(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    model_name: str,
    labels: bool = True,
) -> TrainingSetSummary:
    """Steps 1-2: the labels as of ``as_of`` (unless ``labels`` is False: already built), then
    the training set without the label weeks quarantined for ``model_name`` by then."""
    if labels:
        build_labeled_outcomes(con, settings.labeling, as_of)
    features = discover_features(con, settings.features)
    quarantined = quarantined_weeks(con, model_name, as_of)
    return build_training_set(con, settings.training, features, as_of, quarantined)


def retrain_on(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    settings: Settings,
    info: TrainingSetInfo,
    trigger: str,
    *,
    families: list[str] | None = None,
    search: bool = False,
    half_life_search: bool | None = None,
    tags: dict[str, str] | None = None,
    dagster_run_id: str | None = None,
    progress: Progress = print,
) -> RetrainResult:
    """Steps 3-5 on the set ``info`` names: challengers (``families``, by default
    ``models.families``; a hyperparameter ``search`` in the full retrain), the evaluation and
    the gate's decision on it (``promotion.judge``), and the decision applied (aliases and
    ledger)."""
    round_ = train_challengers(
        con,
        registry,
        settings,
        list(families if families is not None else settings.models.families),
        search,
        {"trigger": trigger, **(tags or {})},
        progress,
        info,
        half_life_search=half_life_search,
    )
    report = evaluate_and_judge(
        con, registry, round_, settings.gate, settings.models.seed, progress
    )
    change = apply_decision(con, registry, report, trigger, dagster_run_id, settings, progress)
    return RetrainResult(round_, report, change)


def retrain(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    settings: Settings,
    as_of: datetime,
    trigger: str,
    progress: Progress = print,
) -> RetrainResult:
    """The whole retrain as of ``as_of``, as ``retrain_job`` runs it."""
    built = training_set_as_of(con, settings, as_of, registry.model_name)
    return retrain_on(con, registry, settings, built.info, trigger, progress=progress)
