"""Challengers: one fit per family on `train`, chosen on `validation`, logged and registered.

A fit on the same training set with the same parameters reuses its earlier version, so a retrain
on unchanged data creates no version and moves no alias.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from feedback_pipeline.progress import Progress
from feedback_pipeline.registry.model_registry import CHAMPION, ModelRegistry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.dataset import (
    TrainingSetInfo,
    load_info,
    split_counts,
    training_set_table,
)
from feedback_pipeline.training.families import (
    FAMILIES,
    HALF_LIFE,
    dask_client,
    family_named,
    family_params,
    fit,
    train_family,
)
from feedback_pipeline.training.splits import Split, load_split, selection_sample
from feedback_pipeline.vocabulary import BASELINE_SOURCE
from feedback_pipeline.warehouse.summaries import markdown


@dataclass(frozen=True)
class Challenger:
    """A registered challenger and the training set it was fitted on."""

    version: str
    run_id: str
    family: str
    params: dict[str, Any]
    validation: dict[str, float]
    training_set_hash: str
    as_of: datetime
    rows_fit: int | None = None  # train rows it was fit on (a sample above selection_rows)


@dataclass(frozen=True)
class ChallengerRound:
    """What ``challenger_models`` hands to ``evaluation_report``: one round on one training set."""

    training_set_hash: str
    as_of: datetime
    challengers: tuple[Challenger, ...] = field(default_factory=tuple)
    # the train rows the challengers were fit on: a seeded sample of at most this many
    selection_rows: int | None = None
    seed: int = 42

    @property
    def best(self) -> Challenger:
        """Chosen on weighted validation log loss, never on the holdout."""
        return min(self.challengers, key=lambda c: c.validation["log_loss"])


def model_card(
    family: str,
    params: dict,
    info: TrainingSetInfo,
    counts: pd.DataFrame,
    validation: dict[str, float],
    extra: str = "",
    rows_fit: int | None = None,
) -> str:
    train_rows = int(counts.loc[counts["split"] == "train", "rows"].sum())
    sample = (
        f"Fit on a seeded random sample of {rows_fit:,} of the {train_rows:,} train rows "
        "(training.selection_rows); a promoted refit uses every final row."
        if rows_fit is not None and rows_fit < train_rows
        else ""
    )
    return "\n\n".join(
        [
            f"# feedback_model challenger: {family}",
            f"Data window: {info.window_start} .. {info.as_of} (as_of), training-set hash "
            f"`{info.content_hash}`, data watermark {info.data_watermark}.",
            f"Features: {', '.join(info.features)}",
            sample,
            "## Hyperparameters\n\n" + markdown([params]),
            "## Rows per split and source\n\n" + markdown(counts),
            "## Validation metrics (weighted)\n\n" + markdown([validation]),
            extra,
        ]
    )


@dataclass(frozen=True)
class TrainingData:
    """The current training set, loaded once per round."""

    info: TrainingSetInfo
    train: Split
    validation: Split
    counts: pd.DataFrame


def train_challengers(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    settings: Settings,
    families: list[str],
    search: bool,
    tags: dict[str, str],
    progress: Progress = print,
    info: TrainingSetInfo | None = None,
    half_life_search: bool | None = None,
) -> ChallengerRound:
    """Fit one challenger per family on `train`, pick hyperparameters on `validation`, log
    each as an MLflow run and register it as a new version of `feedback_model`. With
    `models.engine: dask` XGBoost trains on a Dask cluster and registers like a local one.

    ``info``: the training set this run built (its rows are read by its hash, never whatever
    another run built since); None: the newest set. ``half_life_search``: whether this round
    searches the half-lives (None: when it searches hyperparameters, a full retrain).

    Args:
        con: the warehouse holding the training set.
        registry: where each challenger is logged and registered.
        settings: the run's settings (families' hyperparameters, engine, seed, half-lives).
        families: the model families to fit, one challenger each.
        search: draw ``models.search_budget`` candidates per family (the full retrain).
        tags: added to every registered version (trigger, run id).
        progress: where the progress lines go.
        info: the training set to read, by its hash; None: the newest.
        half_life_search: whether the half-lives are searched; None: when ``search`` is.

    Returns:
        The round: the set's hash and ``as_of``, the registered challengers, the best on
        validation, and how the candidates were sampled."""
    for family in families:
        family_named(family)  # an unknown name fails before any data is read
    for name in settings.models.hyperparameters.extra_families():
        if name not in FAMILIES:  # a misspelled family in models.hyperparameters names itself
            raise ValueError(
                f"models.hyperparameters.{name}: no model family of that name is registered "
                f"({', '.join(sorted(FAMILIES))})"
            )
    info = info if info is not None else load_info(con)
    data = TrainingData(
        info,
        selection_sample(
            load_split(con, "train", info.features, info.content_hash),
            settings.training.selection_rows,
            settings.models.seed,
        ),
        load_split(con, "validation", info.features, info.content_hash),
        split_counts(con, info.content_hash),
    )
    if len(data.train) == 0 or len(data.validation) == 0:
        raise ValueError(
            f"training set too small: {len(data.train)} train and {len(data.validation)} "
            f"validation rows in the window {info.window_start} .. {info.as_of} (as_of): "
            "is as_of right for this data, and lookback_days wide enough?"
        )
    registry.start_package_scan()  # MLflow's one-time set-up runs while the models fit
    budget = settings.models.search_budget if search else 1
    searching = search if half_life_search is None else half_life_search
    half_lives = candidate_half_lives(settings, searching, champion_half_life(registry))
    engine = (
        dask_client(settings.models.dask_scheduler)
        if settings.models.engine == "dask"
        else contextlib.nullcontext()
    )
    with engine as client:
        if client is not None:
            progress(f"training XGBoost on Dask, scheduler {client.scheduler.address}")
        challengers = tuple(
            _train_and_register(
                registry, settings, family, budget, half_lives, tags, data, client, progress
            )
            for family in families
        )
    return ChallengerRound(
        info.content_hash,
        info.as_of,
        challengers,
        settings.training.selection_rows,
        settings.models.seed,
    )


NO_CHAMPION = object()  # no champion, or one whose half-life was not recorded


def champion_half_life(registry: ModelRegistry) -> float | None | object:
    """The half-life of the champion's procedure, or ``NO_CHAMPION``."""
    version = registry.alias_version(CHAMPION)
    if version is None:
        return NO_CHAMPION
    procedure = registry.version_tags(version).get("procedure")
    params = json.loads(procedure).get("params", {}) if procedure else {}
    return params.get(HALF_LIFE, NO_CHAMPION)


def candidate_half_lives(
    settings: Settings, search: bool, incumbent: float | None | object
) -> list[float | None]:
    """The half-lives this round fits: all of ``training.half_life_days`` in a full retrain, at
    a cold start or with ``half_life_search: every_retrain``; else only the champion's, so a
    weekly retrain refreshes the incumbent procedure instead of switching on one week of
    validation noise. A champion's half-life that is no longer configured (the settings
    changed) is searched again."""
    configured = list(settings.training.half_life_days)
    if (
        search
        or incumbent not in configured
        or settings.training.half_life_search == "every_retrain"
    ):
        return configured
    return [incumbent]  # type: ignore[list-item]


def _train_and_register(
    registry: ModelRegistry,
    settings: Settings,
    family: str,
    budget: int,
    half_lives: list[float | None],
    tags: dict[str, str],
    data: TrainingData,
    client: Any,
    progress: Progress,
) -> Challenger:
    """One family: fit (and search), then register a new version or reuse an identical one."""
    info, features = data.info, data.info.features
    progress(f"training {family} on {len(data.train):,} rows ({budget} candidate(s))")
    fitted = train_family(
        family,
        family_params(family, settings.models.hyperparameters.for_family(family)),
        data.train,
        data.validation,
        settings.models.seed,
        budget,
        settings.gate.threshold,
        client,
        half_lives,
    )
    fit_params = {
        "family": family,
        **fitted.params,
        "outcome_weight": settings.training.outcome_weight,
        "lookback_days": info.settings["lookback_days"],
        "use_outcomes": info.settings["use_outcomes"],
        "seed": settings.models.seed,
        "candidates_tried": fitted.candidates_tried,
        "selection_rows": settings.training.selection_rows,
        "engine": "dask" if client is not None and family == "xgboost" else "local",
    }
    # The same rows and the same parameters make the same model, whatever the run's as_of
    # and however many candidates were tried to choose them (a weekly round tries one).
    made_by = {k: v for k, v in fit_params.items() if k != "candidates_tried"}
    fit_key = hashlib.md5(
        json.dumps([info.content_hash, made_by], sort_keys=True, default=str).encode()
    ).hexdigest()
    registered = registry.find_version("fit_key", fit_key)
    if registered is not None:  # same data, same settings: the same model, not a new one
        progress(f"{family}: unchanged data and settings, reusing version {registered.version}")
    else:
        metrics = {f"validation_{k}": v for k, v in fitted.validation_metrics.items()}
        metrics.update({"rows_train": len(data.train), "rows_validation": len(data.validation)})
        version_tags = {
            **tags,
            "as_of": str(info.as_of),
            "training_set_hash": info.content_hash,
            "data_watermark": str(info.data_watermark),
            "features": json.dumps(features),
            "fit_key": fit_key,
            "role": "candidate",
            "procedure": json.dumps({"family": family, "params": fitted.params}),
        }
        card = model_card(
            family, fitted.params, info, data.counts, fitted.validation_metrics, "", len(data.train)
        )
        registered = registry.log_challenger(
            fitted.estimator,
            family,
            features,
            data.validation.X,
            {**fit_params, "as_of": str(info.as_of)},
            metrics,
            version_tags,
            card,
        )
        progress(
            f"{family}: registered version {registered.version} "
            f"(validation log loss {fitted.validation_metrics['log_loss']:.4f})"
        )
    return Challenger(
        version=registered.version,
        run_id=registered.run_id,
        family=family,
        params=fitted.params,
        validation=fitted.validation_metrics,
        training_set_hash=info.content_hash,
        as_of=info.as_of,
        rows_fit=len(data.train),
    )


REFIT_SPLITS = ("train", "validation", "holdout", "refit_only")


def refit_candidate(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    settings: Settings,
    candidate: Challenger,
    tags: dict[str, str],
    progress: Progress = print,
    refresh: bool = False,
) -> Challenger:
    """The model that gets promoted: the evaluated candidate's family and parameters refit on
    every row whose label is final as of ``as_of`` (train, validation, holdout and the recent
    rows with a final label), so the champion learns from its freshest data. The gate judged the
    procedure on rows the candidate never saw; the refit is registered with a link to it.

    ``refresh``: ``candidate`` is the current champion, whose procedure won the gate's
    comparison; the refit is that procedure on the fresh data."""
    # The set the candidate was judged on, by its hash, and the run's own as_of.
    info = replace(load_info(con, candidate.training_set_hash), as_of=candidate.as_of)
    rows = load_split(con, REFIT_SPLITS, info.features, info.content_hash)
    (watermark,) = con.execute(
        f"SELECT max(labeled_at) FILTER (WHERE source <> '{BASELINE_SOURCE}') "
        f"FROM {training_set_table(info.content_hash)} WHERE list_contains(?, split)",
        [list(REFIT_SPLITS)],
    ).fetchall()[0]
    params = {**candidate.params}
    fit_key = hashlib.md5(
        json.dumps(
            [info.content_hash, candidate.family, params, settings.models.seed, "refit"],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    registered = registry.find_version("fit_key", fit_key)
    if registered is not None:
        progress(f"refit of v{candidate.version}: unchanged, reusing version {registered.version}")
    else:
        progress(f"refitting {candidate.family} v{candidate.version} on {len(rows):,} final rows")
        estimator = fit(candidate.family, params, rows, settings.models.seed)
        origin = (
            f"Refresh of champion v{candidate.version}'s procedure (run `{candidate.run_id}`), "
            "which the gate preferred to this round's challenger when both were fit on the same "
            "train split and judged on holdout rows neither saw. It is refit"
            if refresh
            else f"Refit of the evaluated candidate v{candidate.version} (run "
            f"`{candidate.run_id}`) with its parameters, which the gate judged on holdout rows "
            "it never saw"
        )
        card = "\n\n".join(
            [
                f"# feedback_model champion refit: {candidate.family}",
                f"{origin} on every row whose label is final as of {info.as_of}: {len(rows):,} "
                "rows (train, validation, holdout and recent rows with a final label), trained "
                f"through {watermark}. This refit has seen the holdout.",
                f"Training-set hash `{info.content_hash}`, maturity {info.maturity_days:.3f} "
                f"days, data clock {info.data_clock}.",
                "## Parameters\n\n" + markdown([params]),
            ]
        )
        registered = registry.log_challenger(
            estimator,
            candidate.family,
            info.features,
            rows.X,
            {"family": candidate.family, **params, "refit_of": candidate.version},
            {"rows_refit": len(rows)},
            {
                **tags,
                "as_of": str(info.as_of),
                "training_set_hash": info.content_hash,
                "data_watermark": str(watermark),
                "features": json.dumps(info.features),
                "fit_key": fit_key,
                "role": "refit",
                "procedure": json.dumps({"family": candidate.family, "params": params}),
                "refit_of": candidate.version,
                "refit_kind": "refresh" if refresh else "promotion",
                "evaluated_candidate_run_id": candidate.run_id,
            },
            card,
        )
        progress(f"refit registered as version {registered.version}")
    return Challenger(
        version=registered.version,
        run_id=registered.run_id,
        family=candidate.family,
        params=params,
        validation=candidate.validation,
        training_set_hash=info.content_hash,
        as_of=info.as_of,
    )
