"""Moving the ``champion`` alias: the gate's decision, a rollback or a forced promotion, each
written to the ledger (DESIGN section 8). The one place that moves aliases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from feedback_pipeline.evaluation.report import EvaluationReport
from feedback_pipeline.promotion import ledger
from feedback_pipeline.registry.mlflow_registry import CHALLENGER, CHAMPION, Registry
from feedback_pipeline.settings import Settings
from feedback_pipeline.training.challengers import Challenger, Progress, refit_candidate


@dataclass(frozen=True)
class ChampionChange:
    old_version: str | None
    new_version: str | None
    promoted: bool
    reason: str


def apply_decision(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    report: EvaluationReport,
    trigger: str,
    dagster_run_id: str | None,
    settings: Settings,
    progress: Progress = print,
) -> ChampionChange:
    """Move the aliases as decided and append the decision to the ledger, promoted or not.

    What becomes champion is the refit of the chosen candidate on every row whose label is final
    (``training.refit``, on by default); ``challenger`` points at the evaluated candidate. When the
    gate preferred the champion's procedure (``decision.refresh``), that procedure is refit."""
    decision = report.decision
    old = registry.alias_version(CHAMPION)
    best_candidate = report.best.challenger
    best = best_candidate.version
    now = datetime.now().isoformat(timespec="seconds")
    if report.mode != "dry_run":
        registry.set_alias(CHALLENGER, best)
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
    if applied and promoted == old:  # same rows, same procedure: the same model
        applied = False
        reason = f"the refit is the current champion v{old} (same data, same procedure): {reason}"
    if applied:
        registry.set_alias(CHAMPION, promoted)
        registry.tag_version(promoted, "promoted_at", now)
        if old is not None:
            registry.tag_version(old, "retired_at", now)
            registry.tag_version(old, "replaced_by", promoted)
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
    )
    return ChampionChange(old, new, applied, reason)


def champion_procedure(registry: Registry, report: EvaluationReport) -> Challenger:
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
    con: duckdb.DuckDBPyConnection, registry: Registry, reason: str, to_version: str | None = None
) -> ChampionChange:
    """Point ``champion`` back at the previous champion (or ``to_version``); ledger it."""
    current = registry.alias_version(CHAMPION)
    if to_version is None:
        to_version = ledger.previous_champion(con, current)
        if to_version is None:
            raise ValueError(
                f"no previous champion recorded before version {current}; pass --to VERSION"
            )
    return _move_champion(con, registry, to_version, reason, "rollback", current)


def force_promote(
    con: duckdb.DuckDBPyConnection, registry: Registry, version: str, reason: str
) -> ChampionChange:
    return _move_champion(
        con, registry, version, reason, "forced_promotion", registry.alias_version(CHAMPION)
    )


def _move_champion(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    version: str,
    reason: str,
    action: str,
    current: str | None,
) -> ChampionChange:
    if not reason or not reason.strip():
        raise ValueError("--reason is required")
    if str(version) not in registry.versions():
        raise ValueError(f"feedback_model has no version {version}")
    registry.set_alias(CHAMPION, str(version))
    registry.tag_version(str(version), "promoted_at", datetime.now().isoformat(timespec="seconds"))
    ledger.append_event(con, action, reason, True, current, str(version), trigger="cli")
    return ChampionChange(current, str(version), True, reason)
