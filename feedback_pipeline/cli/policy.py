"""``policy``: show, list, apply or roll back the serving policy's versions."""

from __future__ import annotations

import argparse
import json

import duckdb

from feedback_pipeline.cli._common import open_warehouse, print_json
from feedback_pipeline.promotion import ledger
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.serving.policy import store as policies
from feedback_pipeline.warehouse import summaries as reporting


def _policy(args: argparse.Namespace) -> int:
    """Show, list, apply or roll back serving policy versions."""
    con = open_warehouse(args.data_dir, read_only=False)
    try:
        if args.action == "show":
            return _show(args, con)
        if args.action == "history":
            frame = policies.history(con, args.limit)
            if args.json:
                print_json(json.loads(frame.to_json(orient="records")))
            else:
                print(reporting.markdown(frame, max_rows=args.limit))
            return 0
        registry = local_registry(args.data_dir)
        if args.action == "apply":
            change = policies.apply_policy(con, registry, args.version, args.reason)
        else:
            change = policies.rollback_policy(con, registry, args.reason)
    finally:
        con.close()
    if args.json:
        print_json(
            {
                "action": args.action,
                "old_version": change.old_version,
                "new_version": change.new_version,
                "reason": change.reason,
            }
        )
    else:
        print(
            f"serving policy: v{change.old_version} -> v{change.new_version} ({args.action}; "
            f"the champion serves it on its next load; recorded in {ledger.LEDGER})"
        )
    return 0


def _show(args: argparse.Namespace, con: duckdb.DuckDBPyConnection) -> int:
    """The active policy, the version the champion serves and the newest proposal."""
    active = policies.active_policy(con)
    proposal = policies.latest_proposal(con)
    served = local_registry(args.data_dir).active_policy_version()
    if args.json:
        print_json(
            {
                "active": active.to_dict(),
                "served_by_champion": served,
                "latest_proposal": None
                if proposal is None
                else {
                    "version": proposal.version,
                    "status": proposal.status,
                    "reason": proposal.reason,
                    "stages": json.loads(proposal.stages.to_json(orient="records")),
                    "before": proposal.metrics_before,
                    "after": proposal.metrics_after,
                },
            }
        )
        return 0
    print(policies.describe(active, served, proposal))
    return 0


def add_policy(commands: argparse._SubParsersAction) -> None:
    policy = commands.add_parser(
        "policy", help="the serving policy: show, history, apply, rollback"
    )
    actions = policy.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="the active policy and what the champion serves")
    history = actions.add_parser("history", help="every version, newest first")
    history.add_argument("--limit", type=int, default=20)
    apply = actions.add_parser("apply", help="serve a version (default: the newest proposal)")
    apply.add_argument("version", nargs="?", type=int, default=None)
    apply.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    back = actions.add_parser("rollback", help="serve the previously applied version again")
    back.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    for action in (show, history, apply, back):
        action.add_argument("--json", action="store_true", help="print the result as JSON")
    policy.set_defaults(handler=_policy)
