"""``ops.serving_policies``: every serving policy version, proposed, applied or rolled back.

It follows the gate's pattern: a proposal is recorded (dry run) and served only when applied, on
request or by setting; a rollback serves the version applied before it again (or the default,
version 0). Applying publishes the policy to the registry (``Registry.publish_policy``), so a
fresh load of ``models:/feedback_model@champion`` serves it, and appends to the ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from feedback_pipeline.promotion import ledger
from feedback_pipeline.served_policy import ServingPolicy
from feedback_pipeline.serving.policy.proposal import PolicyProposal, StageResult, stage_table
from feedback_pipeline.warehouse import summaries
from feedback_pipeline.warehouse.connection import transaction
from feedback_pipeline.warehouse.tables import SERVING_POLICIES

if TYPE_CHECKING:
    from feedback_pipeline.registry.mlflow_registry import Registry


class PolicyError(ValueError):
    """A policy command that cannot be carried out; the message says what to do."""


@dataclass(frozen=True)
class PolicyChange:
    old_version: int
    new_version: int
    reason: str


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def active_policy(con: duckdb.DuckDBPyConnection) -> ServingPolicy:
    """The policy being served (the default, version 0, when none was applied)."""
    rows = con.execute(f"SELECT policy FROM {SERVING_POLICIES} WHERE status = 'active'").fetchall()
    return ServingPolicy.from_dict(json.loads(rows[0][0])) if rows else ServingPolicy()


def history(con: duckdb.DuckDBPyConnection, limit: int = 20) -> pd.DataFrame:
    return con.execute(
        f"""
        SELECT policy_version, status, model_version,
               strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created_at,
               strftime(applied_at, '%Y-%m-%d %H:%M:%S') AS applied_at,
               round(json_extract_string(policy, '$.threshold')::DOUBLE, 4) AS threshold,
               json_extract_string(policy, '$.blend_weight')::DOUBLE AS blend_weight,
               coalesce(json_extract_string(policy, '$.calibration.method'), '-') AS calibration,
               coalesce(json_extract_string(policy, '$.rule_weights'), 'null') <> 'null'
                   AS rule_weights,
               coalesce(rollback_reason, reason) AS reason
        FROM {SERVING_POLICIES} ORDER BY policy_version DESC LIMIT {int(limit)}
        """
    ).df()


@dataclass(frozen=True)
class ProposalSummary:
    """The newest proposal: its version, status and what each stage did."""

    version: int
    status: str
    reason: str
    stages: pd.DataFrame  # stage, ran, changed, fitted_rows, before, after, reason
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]


def latest_proposal(con: duckdb.DuckDBPyConnection) -> ProposalSummary | None:
    rows = con.execute(
        f"""SELECT policy_version, status, reason, stages, metrics_before, metrics_after
            FROM {SERVING_POLICIES} WHERE stages IS NOT NULL
            ORDER BY policy_version DESC LIMIT 1"""
    ).fetchall()
    if not rows:
        return None
    version, status, reason, stages, before, after = rows[0]
    results = [StageResult(**stage) for stage in json.loads(stages)]
    return ProposalSummary(
        int(version), status, reason, stage_table(results), json.loads(before), json.loads(after)
    )


def record_proposal(
    con: duckdb.DuckDBPyConnection,
    proposal: PolicyProposal,
    model_version: str,
    dagster_run_id: str | None = None,
) -> int:
    """Store ``proposal`` as the next version, status ``proposed``; returns its version."""
    with transaction(con):
        version = con.execute(
            f"SELECT coalesce(max(policy_version), 0) + 1 FROM {SERVING_POLICIES}"
        ).fetchall()[0][0]
        reason = proposal.verdict()
        con.execute(
            f"INSERT INTO {SERVING_POLICIES} (policy_version, created_at, status, model_version, "
            "policy, reason, stages, metrics_before, metrics_after, dagster_run_id) "
            "VALUES (?, ?, 'proposed', ?, ?, ?, ?, ?, ?, ?)",
            [
                version,
                _now(),
                model_version,
                json.dumps(replace(proposal.policy, version=int(version)).to_dict()),
                reason,
                json.dumps(proposal.as_dict()["stages"], default=float),
                json.dumps(proposal.before),
                json.dumps(proposal.after),
                dagster_run_id,
            ],
        )
    return int(version)


def _version_row(con: duckdb.DuckDBPyConnection, version: int) -> tuple[str, ServingPolicy]:
    rows = con.execute(
        f"SELECT status, policy FROM {SERVING_POLICIES} WHERE policy_version = ?", [version]
    ).fetchall()
    if not rows:
        raise PolicyError(
            f"no serving policy version {version}: see `feedback-pipeline policy history`"
        )
    return rows[0][0], ServingPolicy.from_dict(json.loads(rows[0][1]))


def apply_policy(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    version: int | None,
    reason: str,
    trigger: str = "cli",
    dagster_run_id: str | None = None,
) -> PolicyChange:
    """Serve policy ``version`` (default: the newest proposal): publish it to the registry,
    mark it active (the previous one superseded) and append to the ledger."""
    if version is None:
        rows = con.execute(
            f"SELECT max(policy_version) FROM {SERVING_POLICIES} WHERE status = 'proposed'"
        ).fetchall()
        if rows[0][0] is None:
            raise PolicyError("no proposed serving policy: materialize serving_policy first")
        version = int(rows[0][0])
    status, policy = _version_row(con, version)
    if status == "active":
        raise PolicyError(f"serving policy v{version} is already active")
    old = int(active_policy(con).version)
    with transaction(con):
        run_id = registry.publish_policy(policy)  # MLflow first: if it fails, nothing changes
        con.execute(f"UPDATE {SERVING_POLICIES} SET status = 'superseded' WHERE status = 'active'")
        con.execute(
            f"UPDATE {SERVING_POLICIES} SET status = 'active', applied_at = ?, mlflow_run_id = ?, "
            "rolled_back_at = NULL, rollback_reason = NULL WHERE policy_version = ?",
            [_now(), run_id, version],
        )
        ledger.append_event(
            con,
            "policy_applied",
            f"serving policy v{old} -> v{version}: {reason}",
            promoted=False,
            old_version=None,
            new_version=None,
            trigger=trigger,
            metrics={"policy_before": old, "policy_after": version},
            dagster_run_id=dagster_run_id,
        )
    return PolicyChange(old, version, reason)


def rollback_policy(
    con: duckdb.DuckDBPyConnection, registry: Registry, reason: str
) -> PolicyChange:
    """Stop serving the active policy: the one applied before it is served again (or the
    default, version 0), without a retrain."""
    current = int(active_policy(con).version)
    if current == 0:
        raise PolicyError("no serving policy is applied: nothing to roll back")
    previous = con.execute(
        f"""SELECT policy_version, policy FROM {SERVING_POLICIES}
            WHERE status = 'superseded' AND applied_at IS NOT NULL
            ORDER BY applied_at DESC LIMIT 1"""
    ).fetchall()
    with transaction(con):
        if previous:
            run_id = registry.publish_policy(ServingPolicy.from_dict(json.loads(previous[0][1])))
            con.execute(
                f"UPDATE {SERVING_POLICIES} SET status = 'active', mlflow_run_id = ? "
                "WHERE policy_version = ?",
                [run_id, previous[0][0]],
            )
        else:
            registry.clear_policy()
        con.execute(
            f"UPDATE {SERVING_POLICIES} SET status = 'rolled_back', rolled_back_at = ?, "
            "rollback_reason = ? WHERE policy_version = ?",
            [_now(), reason, current],
        )
        new = int(previous[0][0]) if previous else 0
        ledger.append_event(
            con,
            "policy_rolled_back",
            f"serving policy v{current} -> v{new}: {reason}",
            promoted=False,
            old_version=None,
            new_version=None,
            trigger="cli",
            metrics={"policy_before": current, "policy_after": new},
        )
    return PolicyChange(current, new, reason)


def describe(active: ServingPolicy, served: int | None, proposal: ProposalSummary | None) -> str:
    """For people: the active policy, the version the champion serves and the newest proposal
    with its stages and held-out figures (what ``feedback-pipeline policy show`` prints)."""
    calibration = active.calibration.method if active.calibration else "none"
    text = (
        f"active serving policy: v{active.version} (the champion serves v{served}): "
        f"threshold {active.threshold:.4g}, blend weight {active.blend_weight:g}, "
        f"calibration {calibration}, rule weights "
        f"{'learned' if active.rule_weights else 'none (rule_confidence)'}"
    )
    if proposal is None:
        return f"{text}\nno proposal yet: materialize serving_policy (analytics_job)"
    return (
        f"{text}\n\nnewest proposal: v{proposal.version} ({proposal.status}; {proposal.reason})"
        f"\n\n{summaries.markdown(proposal.stages)}\n\non held-out rows: current "
        f"{_metrics_line(proposal.metrics_before)}\n                  proposed "
        f"{_metrics_line(proposal.metrics_after)}"
    )


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
