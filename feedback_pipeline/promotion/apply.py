"""Moving the ``champion`` alias: the gate's decision, a rollback or a forced promotion, each
written to the ledger. The one place that moves aliases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from feedback_pipeline.progress import Progress
from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.judge import EvaluationReport
from feedback_pipeline.promotion.lock import promotion_lock
from feedback_pipeline.registry.model_registry import CHALLENGER, CHAMPION, ModelRegistry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import Challenger, refit_candidate
from feedback_pipeline.training.quarantine import record_quarantine, release_quarantine


@dataclass(frozen=True)
class ChampionChange:
    old_version: str | None
    new_version: str | None
    promoted: bool
    reason: str


def apply_decision(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    report: EvaluationReport,
    trigger: str,
    dagster_run_id: str | None,
    settings: Settings,
    progress: Progress = print,
) -> ChampionChange:
    """Move the aliases as decided and append the decision to the ledger, promoted or not.

    What becomes champion is the refit of the chosen candidate on every row whose label is final
    (``training.refit``, on by default); ``challenger`` points at the evaluated candidate. When the
    gate preferred the champion's procedure (``decision.refresh``), that procedure is refit.

    The refit runs first, outside the promotion lock; then, holding it, the alias is checked
    against the champion the report judged (another run may have moved it since: then the
    decision is stale and refused), versions are tagged, aliases move, and the ledger row is
    written, in that order, so a kill at any point leaves a state the next run reuses (the
    refit, by its fit key) or repairs (an alias move the ledger missed, see ``reconcile``).

    Args:
        con: the warehouse: the promotion lock, the ledger and the quarantine are in it.
        registry: where the aliases move and the refit is registered.
        report: the evaluation with the gate's decision (``promotion.judge``).
        trigger: what started the retrain, written on the refit and in the ledger.
        dagster_run_id: the Dagster run, when one runs this; None otherwise.
        settings: ``training.refit`` and what the refit needs.
        progress: where the progress lines go.

    Returns:
        The champion before and after, whether it moved, and why."""
    decision = report.decision
    best_candidate = report.best.challenger
    best = best_candidate.version
    promoted, applied, reason = best, decision.applied, decision.reason
    if applied and decision.refresh and not settings.training.refit:
        applied = False  # nothing to refresh with: the old champion stays
        reason = f"{reason} (training.refit is off: the old champion stays)"
    elif applied and settings.training.refit:
        tags = {"trigger": trigger, "dagster_run_id": dagster_run_id or ""}
        evaluated = champion_procedure(registry, report) if decision.refresh else best_candidate
        refit = refit_candidate(
            con, registry, settings, evaluated, tags, progress, refresh=decision.refresh
        )
        promoted = refit.version
    with promotion_lock(con):
        old = reconcile(con, registry, trigger, dagster_run_id)
        # A rerun of a promotion that was killed after its alias move finds its own refit
        # already champion: that is the same model, not another run's move.
        same = applied and promoted == old
        stale = report.mode != "dry_run" and old != report.champion_version and not same
        if stale:
            applied = False
            reason = (
                f"stale: this run judged its challenger against champion "
                f"{_named(report.champion_version)}, but the champion is now {_named(old)} "
                "(another run or an operator moved it meanwhile); nothing moved. The next retrain "
                f"judges against {_named(old)}. The gate had said: {reason}"
            )
        if same:  # same rows, same procedure: the same model
            applied = False
            reason = (
                f"the refit is the current champion v{old} (same data, same procedure): {reason}"
            )
        now = datetime.now().isoformat(timespec="seconds")
        if applied:
            registry.tag_version(promoted, "promoted_at", now)
            if old is not None:
                registry.tag_version(old, "retired_at", now)
                registry.tag_version(old, "replaced_by", promoted)
        if report.mode != "dry_run":  # found whatever moved meanwhile: the labels are bad
            record_quarantine(
                con,
                registry.model_name,
                report.as_of,
                report.champion_version,
                report.contradicting_weeks,
            )
            release_persisting(con, registry.model_name, report.persisting_weeks)
        if report.mode != "dry_run" and not stale:
            registry.set_alias(CHALLENGER, best)
        if applied:
            registry.set_alias(CHAMPION, promoted)
        new = promoted if applied else old
        ledger.append_event(
            con,
            "retrain",
            reason,
            applied,
            old,
            new,
            trigger=trigger,
            as_of=report.as_of,
            challenger_version=best,
            mode=report.mode,
            metrics={"challenger": report.best.holdout, "champion": report.champion_metrics},
            deltas=report.deltas,
            dagster_run_id=dagster_run_id,
            model_name=registry.model_name,
        )
    return ChampionChange(old, new, applied, reason)


def _named(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


def reconcile(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    trigger: str | None = None,
    dagster_run_id: str | None = None,
) -> str | None:
    """The champion alias as MLflow has it, after recording any move the ledger missed.

    Aliases move before the ledger row is written; a promoter killed between the two leaves
    the alias ahead of the ledger. Called under the promotion lock, so no promoter is midway:
    a difference is such an interrupted move, and it is written down as a ``repair`` row."""
    current = registry.alias_version(CHAMPION)
    recorded = ledger.last_champion(con, registry.model_name)
    if current != recorded:
        ledger.append_event(
            con,
            "repair",
            f"the champion alias is {_named(current)} but the ledger's last champion was "
            f"{_named(recorded)}: an alias move the ledger never recorded (a promoter killed "
            "between the two, or a move made outside feedback-pipeline); recorded now",
            current is not None,
            recorded,
            current,
            trigger=trigger,
            dagster_run_id=dagster_run_id,
            model_name=registry.model_name,
        )
    return current


def champion_procedure(registry: ModelRegistry, report: EvaluationReport) -> Challenger:
    """The champion's procedure as a candidate to refit: it won the gate's comparison."""
    assert report.champion_version is not None and report.champion_procedure is not None
    return Challenger(
        version=report.champion_version,
        run_id=registry.run_id(report.champion_version),
        family=report.champion_procedure["family"],
        params=report.champion_procedure["params"],
        validation={},
        training_set_hash=report.training_set_hash,
        as_of=report.as_of,
    )


def rollback(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    reason: str,
    to_version: str | None = None,
) -> ChampionChange:
    """Point ``champion`` back at the previous champion (or ``to_version``); ledger it."""
    return _move_champion(con, registry, to_version, reason, "rollback")


def force_promote(
    con: duckdb.DuckDBPyConnection, registry: ModelRegistry, version: str, reason: str
) -> ChampionChange:
    return _move_champion(con, registry, version, reason, "forced_promotion")


def _move_champion(
    con: duckdb.DuckDBPyConnection,
    registry: ModelRegistry,
    version: str | None,
    reason: str,
    action: str,
) -> ChampionChange:
    """An operator's move (``version`` None: back to the previous champion), under the
    promotion lock: tag, alias, ledger, like the gate's. The only way backwards."""
    if not reason or not reason.strip():
        raise ValueError("--reason is required")
    with promotion_lock(con):
        current = reconcile(con, registry, "cli")
        if version is None:
            version = ledger.previous_champion(con, current, registry.model_name)
            if version is None:
                raise ValueError(
                    f"no previous champion recorded before version {current}; pass --to VERSION"
                )
        if str(version) not in registry.versions():
            raise ValueError(f"{registry.model_name} has no version {version}")
        now = datetime.now().isoformat(timespec="seconds")
        registry.tag_version(str(version), "promoted_at", now)
        registry.set_alias(CHAMPION, str(version))
        ledger.append_event(
            con,
            action,
            reason,
            True,
            current,
            str(version),
            trigger="cli",
            model_name=registry.model_name,
        )
    return ChampionChange(current, str(version), True, reason)


def release_persisting(
    con: duckdb.DuckDBPyConnection, model_name: str, weeks: tuple[datetime, ...]
) -> None:
    """Release the quarantined weeks of a contradiction that lasted (a new concept), each with
    a ledger row, so the next retrain trains on them."""
    for week in weeks:
        if release_quarantine(con, model_name, week):
            ledger.append_event(
                con,
                "release_quarantine",
                f"week of {week:%Y-%m-%d}: the contradiction lasted {len(weeks)} consecutive "
                "weeks, a new concept rather than a broken feed",
                False,
                None,
                None,
                model_name=model_name,
            )
