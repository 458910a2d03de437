"""Reading the feedback: ``stats`` (weekly figures) and ``ab`` (an A/B comparison)."""

from __future__ import annotations

import argparse
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from feedback_pipeline.analytics.ab_test import ab_compare
from feedback_pipeline.analytics.feedback_stats import WEEKLY_GROUPS, feedback_stats
from feedback_pipeline.cli._common import duration, open_warehouse, print_json
from feedback_pipeline.settings import AB_METRICS, Settings, load_settings, parse_as_of


@dataclass(frozen=True)
class AnalysisWindow:
    """What an analysis command reads: the settings, ``as_of`` and ``since`` (None: the
    settings' window), from the options ``_analysis_options`` adds."""

    settings: Settings
    as_of: datetime
    since: datetime | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AnalysisWindow:
        as_of = parse_as_of(args.as_of)
        return cls(load_settings(args.settings), as_of, as_of - args.since if args.since else None)


def _stats(args: argparse.Namespace) -> int:
    """The weekly feedback figures, FP-rate trend, segments and note terms."""
    window = AnalysisWindow.from_args(args)
    with closing(open_warehouse(args.data_dir, read_only=True)) as con:
        stats = feedback_stats(
            con,
            window.settings.labeling,
            window.settings.analytics,
            window.as_of,
            window.since,
            tuple(args.by) if args.by else WEEKLY_GROUPS,
        )
    if args.json:
        print_json(stats.as_dict())
        return 0
    print(stats.markdown())
    return 0


def _ab(args: argparse.Namespace) -> int:
    """Compare two variants or two model versions on one or more metrics."""
    window = AnalysisWindow.from_args(args)
    analytics = window.settings.analytics
    with closing(open_warehouse(args.data_dir, read_only=True)) as con:
        comparison = ab_compare(
            con,
            window.settings.labeling,
            analytics,
            window.as_of,
            args.control,
            args.treatment,
            args.metric or analytics.ab_metrics,
            args.by,
            window.since,
        )
    if args.json:
        print_json(comparison.as_dict())
        return 0
    print("\n".join(comparison.lines()))
    return 0


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=duration, default=None, help="e.g. 30d (default: analytics.since_days)"
    )
    parser.add_argument("--as-of", default=None, help="ISO-8601, UTC (default: now)")
    parser.add_argument("--settings", type=Path, default=None, help="a settings YAML file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_stats(commands: argparse._SubParsersAction) -> None:
    stats = commands.add_parser(
        "stats", help="weekly feedback figures, FP-rate trend, segments and note terms"
    )
    stats.add_argument(
        "--by", action="append", choices=WEEKLY_GROUPS, default=None,
        help="group each week by this (repeatable; default: environment, model_version, variant)",
    )  # fmt: skip
    _analysis_options(stats)
    stats.set_defaults(handler=_stats)


def add_ab(commands: argparse._SubParsersAction) -> None:
    ab = commands.add_parser("ab", help="A/B comparison of two variants or model versions")
    ab.add_argument("--control", required=True, help="the control arm, e.g. A")
    ab.add_argument("--treatment", required=True, help="the treatment arm, e.g. B")
    ab.add_argument(
        "--metric", action="append", choices=AB_METRICS, default=None,
        help="repeatable (default: analytics.ab_metrics)",
    )  # fmt: skip
    ab.add_argument("--by", choices=["variant", "model_version"], default="variant")
    _analysis_options(ab)
    ab.set_defaults(handler=_ab)
