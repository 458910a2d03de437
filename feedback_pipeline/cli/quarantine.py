"""``quarantine``: the weeks of labels the gate left out of training; list or release one."""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime

from feedback_pipeline.cli._common import open_warehouse
from feedback_pipeline.promotion import ledger
from feedback_pipeline.registry.model_registry import MODEL_NAME
from feedback_pipeline.training.quarantine import quarantine_table, release_quarantine
from feedback_pipeline.warehouse import summaries as reporting
from feedback_pipeline.warehouse.connection import transaction


def _quarantine(args: argparse.Namespace) -> int:
    """The weeks of labels the gate left out of training, and releasing one (ledgered)."""
    con = open_warehouse(args.data_dir, read_only=args.action == "list")
    try:
        if args.action == "list":
            print(reporting.markdown(quarantine_table(con, MODEL_NAME)))
            return 0
        week = datetime.combine(date.fromisoformat(args.week), datetime.min.time())
        if week.weekday() != 0:
            print(f"error: {args.week} is not a Monday (weeks start on Mondays)", file=sys.stderr)
            return 2
        with transaction(con):
            if not release_quarantine(con, MODEL_NAME, week):
                print(f"error: the week of {args.week} is not quarantined", file=sys.stderr)
                return 2
            ledger.append_event(
                con, "release_quarantine", f"week of {args.week}: {args.reason}", False, None, None
            )
    finally:
        con.close()
    print(f"released the week of {args.week}: the next retrain trains on its labels again")
    return 0


def add_quarantine(commands: argparse._SubParsersAction) -> None:
    quarantine = commands.add_parser(
        "quarantine", help="weeks of labels the gate found contradicting the champion"
    )
    quarantine_actions = quarantine.add_subparsers(dest="action", required=True)
    quarantine_actions.add_parser("list", help="every quarantined week")
    release = quarantine_actions.add_parser(
        "release", help="train on a quarantined week's labels again"
    )
    release.add_argument("week", help="the week's Monday, YYYY-MM-DD")
    release.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    quarantine.set_defaults(handler=_quarantine)
