"""The champion: ``status``, ``rollback`` and ``promote`` (both recorded in the ledger)."""

from __future__ import annotations

import argparse

from feedback_pipeline.cli._common import LOCK_TIMEOUT_SECONDS
from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.apply import force_promote, rollback
from feedback_pipeline.promotion.status import print_status
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.warehouse import connection as warehouse


def _status(args: argparse.Namespace) -> int:
    return print_status(args.data_dir, lock_timeout=LOCK_TIMEOUT_SECONDS)


def _move(args: argparse.Namespace) -> int:
    """``rollback`` or ``promote``: move the champion alias and say from which version to which."""
    con = warehouse.connect(args.data_dir / "warehouse.duckdb", lock_timeout=LOCK_TIMEOUT_SECONDS)
    try:
        registry = local_registry(args.data_dir)
        if args.command == "rollback":
            change = rollback(con, registry, args.reason, args.to)
        else:
            change = force_promote(con, registry, args.version, args.reason)
    finally:
        con.close()
    print(
        f"champion: version {change.old_version} -> {change.new_version} ({args.command}, "
        f"recorded in {ledger.LEDGER})"
    )
    return 0


def add_status(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="champion, decisions, what is in the warehouse")
    status.set_defaults(handler=_status)


def add_rollback(commands: argparse._SubParsersAction) -> None:
    back = commands.add_parser("rollback", help="move champion back to the previous one")
    back.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    back.add_argument("--to", default=None, help="a specific version instead")
    back.set_defaults(handler=_move)


def add_promote(commands: argparse._SubParsersAction) -> None:
    promote = commands.add_parser("promote", help="force a version to champion")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    promote.set_defaults(handler=_move)
