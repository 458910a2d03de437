"""``feedback-pipeline``: simulate landing data, inspect the warehouse, move the champion,
backtest the retraining policy, read the feedback (stats, A/B) and manage the serving policy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from feedback_pipeline.analytics.ab_test import ab_compare
from feedback_pipeline.analytics.feedback_stats import WEEKLY_GROUPS, feedback_stats
from feedback_pipeline.backtest.replay import EXPERIMENT, BacktestPlan, backtest_into
from feedback_pipeline.labels.outcomes import orphan_feedback_count
from feedback_pipeline.monitoring.triggers import count_new_labels, data_watermark
from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.apply import force_promote, rollback
from feedback_pipeline.promotion.lock import PromotionLockTimeout
from feedback_pipeline.registry.mlflow_registry import (
    CHAMPION,
    MODEL_NAME,
    RegistryUnavailable,
    local_registry,
)
from feedback_pipeline.serving import server
from feedback_pipeline.serving import store as policies
from feedback_pipeline.serving.batch import score_file
from feedback_pipeline.settings import (
    AB_METRICS,
    Settings,
    SettingsError,
    default_data_dir,
    load_settings,
    parse_as_of,
)
from feedback_pipeline.simulator import SimulationConfig, simulate
from feedback_pipeline.simulator.public_streams import (
    STREAMS,
    StreamSourceError,
    write_stream_landing,
)
from feedback_pipeline.training.quarantine import quarantine_table, release_quarantine
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse import summaries as reporting
from feedback_pipeline.warehouse.connection import table_exists, transaction

# A person is waiting: wait this long for another process's DuckDB lock, then say what to do.
LOCK_TIMEOUT_SECONDS = 5.0


def _simulate(args: argparse.Namespace) -> int:
    config = SimulationConfig(
        start=args.start,
        days=args.days,
        predictions_per_day=args.predictions_per_day,
        baseline_per_day=args.baseline_per_day,
        seed=args.seed,
        bad_rate=args.bad_rate,
        file_format=args.format,
        label_noise_day=args.label_noise_day,
        label_noise=args.label_noise,
        feature_outage_day=args.feature_outage_day,
        feature_outage=args.feature_outage,
        feature_outage_mode=args.feature_outage_mode,
        class_burst_day=args.class_burst_day,
        class_burst_label=args.class_burst_label,
        class_burst_mode=args.class_burst_mode,
        episode_days=args.episode_days,
    )
    landing = args.out or (args.data_dir / "landing")
    summary = simulate(landing, config)
    print(
        f"wrote {len(summary.files)} files to {landing}: {summary.predictions:,} predictions, "
        f"{summary.feedback_events:,} feedback events, {summary.baseline_examples:,} baseline "
        f"examples, {summary.bad_records:,} bad records"
    )
    return 0


def champion_summary(data_dir: Path, con) -> tuple[str, pd.DataFrame | None]:
    """The champion's version, family, watermark and holdout metrics; labels since watermark."""
    if not (data_dir / "mlflow.db").exists() and "MLFLOW_TRACKING_URI" not in os.environ:
        return "no model registry yet: run `make demo` or retrain_job", None
    registry = local_registry(data_dir)
    version = registry.alias_version(CHAMPION)
    if version is None:
        return "no champion yet", None
    tags = registry.version_tags(version)
    metrics = {
        k.removeprefix("holdout_"): round(v, 4)
        for k, v in registry.run_metrics(version).items()
        if k.startswith("holdout_")
    }
    watermark = data_watermark(registry)  # the same watermark and count as the sensor
    since = count_new_labels(con, watermark, datetime.now(UTC).replace(tzinfo=None))
    line = (
        f"champion: feedback_model version {version} ({tags.get('family', '?')}), trained "
        f"as of {tags.get('as_of')}; data watermark {watermark}; matured labels since the "
        f"watermark: {since}"
    )
    return line, pd.DataFrame([metrics]) if metrics else None


def print_status(data_dir: Path) -> int:
    """Champion, last decisions, table counts, rejects, labels and feedback counts."""
    path = data_dir / "warehouse.duckdb"
    if not path.exists():
        print(f"no warehouse at {path} yet: run `make demo` or the ingest_job first")
        return 1
    con = warehouse.connect(path, read_only=True, lock_timeout=LOCK_TIMEOUT_SECONDS)
    try:
        champion_line, champion_metrics = champion_summary(data_dir, con)
        sections = [
            ("Champion holdout metrics", champion_metrics),
            (
                "Last decisions",
                ledger.recent_events(con, 5) if table_exists(con, ledger.LEDGER) else None,
            ),
            ("Tables", reporting.table_counts(con)),
            ("Rejected records by reason", reporting.rejects_by_reason(con)),
            ("Labels by source and environment", reporting.labels_by_source_and_environment(con)),
            ("Feedback events", reporting.feedback_counts(con)),
        ]
        orphans = orphan_feedback_count(con)
    finally:
        con.close()
    print(f"warehouse: {path}\n{champion_line}\n")
    for title, frame in sections:
        if frame is not None:
            print(f"## {title}\n\n{reporting.markdown(frame, max_rows=40)}\n")
    print(f"orphan feedback events (prediction not landed yet): {orphans}")
    return 0


def _move(args: argparse.Namespace) -> int:
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


def _stream(args: argparse.Namespace) -> int:
    landing = args.out or (args.data_dir / "landing")
    stream = STREAMS[args.name]
    try:
        summary = write_stream_landing(args.name, landing, args.cache, args.limit_rows)
    except StreamSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary.files} files to {landing}: {summary.predictions:,} predictions of "
        f"{args.name} {summary.first_prediction:%Y-%m-%d %H:%M} .. "
        f"{summary.last_prediction:%Y-%m-%d %H:%M}, {stream.rows_per_day:,} a day, each with "
        f"its outcome {stream.label_delay.days} day(s) later"
    )
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    """The weeks of labels the gate left out of training, and releasing one (ledgered)."""
    con = _open_warehouse(args.data_dir, read_only=args.action == "list")
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


def _duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m`` -> a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number and d, h or m, e.g. 7d"
        ) from None


def _backtest(args: argparse.Namespace) -> int:
    """Replay the retraining policy and its baselines; print them side by side."""
    settings = load_settings(args.settings)
    plan = BacktestPlan(parse_as_of(args.start), parse_as_of(args.end), args.every)
    summary, run_id = backtest_into(
        args.out or (args.data_dir / "backtest"),
        args.data_dir / "warehouse.duckdb",
        args.landing,
        local_registry(args.data_dir, experiment=EXPERIMENT),
        settings,
        plan,
        (lambda message: print(message, file=sys.stderr)) if args.json else print,
    )
    if args.json:
        print(json.dumps(summary.as_dict(), default=float))
    else:
        print(f"\nBacktest {summary.backtest_id}: prequential metrics on the common periods\n")
        print(reporting.markdown(summary.overall))
        print("\nThe policy against each baseline on the same predictions (McNemar's exact test)\n")
        print(reporting.markdown(summary.paired))
        print(f"\nPlot: {summary.plot_path}; MLflow run {run_id} in experiment {EXPERIMENT}")
    return 0


def _open_warehouse(data_dir: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    path = data_dir / "warehouse.duckdb"
    if not path.exists():
        raise ValueError(f"no warehouse at {path} yet: run `make demo` or the ingest_job first")
    return warehouse.connect(path, read_only=read_only, lock_timeout=LOCK_TIMEOUT_SECONDS)


def _print_json(payload: dict | list) -> None:
    print(json.dumps(payload, default=str, allow_nan=False))


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
    with closing(_open_warehouse(args.data_dir, read_only=True)) as con:
        stats = feedback_stats(
            con,
            window.settings.labeling,
            window.settings.analytics,
            window.as_of,
            window.since,
            tuple(args.by) if args.by else WEEKLY_GROUPS,
        )
    if args.json:
        _print_json(stats.as_dict())
        return 0
    print(f"Feedback from {stats.since:%Y-%m-%d %H:%M} to {stats.as_of:%Y-%m-%d %H:%M} UTC\n")
    for title, frame in (
        ("Weekly", stats.weekly),
        ("FP rate per week and environment (Wilson interval)", stats.fp_trend),
        ("Effectiveness (good-label rate) per segment", stats.segments),
        ("Note terms of good and bad labels", stats.note_terms),
    ):
        print(f"## {title}\n\n{reporting.markdown(frame, max_rows=60)}\n")
    return 0


def _ab(args: argparse.Namespace) -> int:
    """Compare two variants or two model versions on one or more metrics."""
    window = AnalysisWindow.from_args(args)
    analytics = window.settings.analytics
    with closing(_open_warehouse(args.data_dir, read_only=True)) as con:
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
        _print_json(comparison.as_dict())
        return 0
    for metric, why in comparison.skipped.items():
        print(f"{metric}: skipped ({why})")
    for r in comparison.results:
        print(
            f"{r.metric} ({r.by} {r.treatment} vs {r.control}, {r.test}): "
            f"{r.control_value:.4g} (n={r.n_control:,}) -> {r.treatment_value:.4g} "
            f"(n={r.n_treatment:,}); difference {r.difference:+.4g} "
            f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}], lift {r.relative_lift:+.1%}, "
            f"p={r.p_value:.3g}"
            + (f" (BH-adjusted {r.p_value_adjusted:.3g})" if r.p_value_adjusted is not None else "")
            + f", {r.effect_size_name} {r.effect_size:+.3f}, power {r.power:.0%}\n"
            f"  -> {r.recommendation}: {r.reason}"
        )
    return 0


def _policy(args: argparse.Namespace) -> int:
    """Show, list, apply or roll back serving policy versions."""
    con = _open_warehouse(args.data_dir, read_only=False)
    try:
        if args.action == "show":
            active = policies.active_policy(con)
            proposal = policies.latest_proposal(con)
            served = local_registry(args.data_dir).active_policy_version()
            if args.json:
                _print_json(
                    {
                        "active": active,
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
            print(
                f"active serving policy: v{active['version']} (the champion serves "
                f"v{served}): threshold {active['threshold']:.4g}, blend weight "
                f"{active['blend_weight']:g}, calibration "
                f"{(active['calibration'] or {}).get('method', 'none')}, rule weights "
                f"{'learned' if active['rule_weights'] else 'none (rule_confidence)'}"
            )
            if proposal is None:
                print("no proposal yet: materialize serving_policy (analytics_job)")
                return 0
            print(
                f"\nnewest proposal: v{proposal.version} ({proposal.status}; {proposal.reason})\n\n"
                f"{reporting.markdown(proposal.stages)}\n\non held-out rows: current "
                f"{_metrics_line(proposal.metrics_before)}\n                  proposed "
                f"{_metrics_line(proposal.metrics_after)}"
            )
            return 0
        if args.action == "history":
            frame = policies.history(con, args.limit)
            if args.json:
                _print_json(json.loads(frame.to_json(orient="records")))
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
        _print_json(
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


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())


def _predict(args: argparse.Namespace) -> int:
    """Score a file of prediction records with the champion (or --version)."""
    registry = local_registry(args.data_dir)
    version = args.version or registry.alias_version(CHAMPION)
    if version is None:
        raise ValueError("no champion yet: run `make demo` or retrain_job, or pass --version")
    if str(version) not in registry.versions():
        raise ValueError(f"--version {version}: no such version of {registry.model_name}")
    result = score_file(args.input, args.output, registry.load(str(version)), str(version))
    if args.json:
        _print_json(result.as_dict())
        return 0
    print(
        f"{args.input} -> {args.output}: {result.rows:,} rows, {result.scored:,} scored by "
        f"{registry.model_name} version {result.model_version} ({result.fallbacks:,} fell back "
        f"to rule_confidence), {result.rejected:,} rejected"
    )
    for reason, count in sorted(result.reasons.items(), key=lambda item: -item[1]):
        print(f"  {count:>8,}  {reason}")
    return 0


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=_duration, default=None, help="e.g. 30d (default: analytics.since_days)"
    )
    parser.add_argument("--as-of", default=None, help="ISO-8601, UTC (default: now)")
    parser.add_argument("--settings", type=Path, default=None, help="a settings YAML file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-pipeline", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $FEEDBACK_PIPELINE_DATA_DIR or ./data)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="write synthetic landing files")
    sim.add_argument("--out", type=Path, default=None, help="landing dir (default: DATA/landing)")
    sim.add_argument("--start", type=date.fromisoformat, default=SimulationConfig.start)
    sim.add_argument("--days", type=int, default=SimulationConfig.days)
    sim.add_argument(
        "--predictions-per-day", type=int, default=SimulationConfig.predictions_per_day
    )
    sim.add_argument("--baseline-per-day", type=int, default=SimulationConfig.baseline_per_day)
    sim.add_argument("--seed", type=int, default=SimulationConfig.seed)
    sim.add_argument("--bad-rate", type=float, default=SimulationConfig.bad_rate)
    sim.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    stress = sim.add_argument_group(
        "stress episodes", "weeks a gate must block (each off unless its day is given)"
    )
    stress.add_argument(
        "--label-noise-day", type=int, default=None, help="feedback wrong from this day"
    )
    stress.add_argument("--label-noise", choices=["flipped", "random"], default="flipped")
    stress.add_argument(
        "--feature-outage-day", type=int, default=None, help="a feature feed breaks this day"
    )
    stress.add_argument("--feature-outage", default=SimulationConfig.feature_outage)
    stress.add_argument("--feature-outage-mode", choices=["missing", "constant"], default="missing")
    stress.add_argument(
        "--class-burst-day", type=int, default=None, help="almost all of one class from here"
    )
    stress.add_argument("--class-burst-label", type=int, choices=[0, 1], default=0)
    stress.add_argument(
        "--class-burst-mode",
        choices=["world", "feedback"],
        default="world",
        help="world: the predictions are of that class; feedback: only they get feedback",
    )
    stress.add_argument(
        "--episode-days", type=int, default=SimulationConfig.episode_days, help="each one's length"
    )
    sim.set_defaults(handler=_simulate)

    status = commands.add_parser("status", help="champion, decisions, what is in the warehouse")
    status.set_defaults(handler=lambda args: print_status(args.data_dir))

    rollback = commands.add_parser("rollback", help="move champion back to the previous one")
    rollback.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    rollback.add_argument("--to", default=None, help="a specific version instead")
    rollback.set_defaults(handler=_move)

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

    streams = commands.add_parser(
        "stream", help="write a public drifting-stream benchmark as landing files"
    )
    streams.add_argument(
        "name",
        choices=list(STREAMS),
        help="; ".join(f"{s.name}: {s.description}" for s in STREAMS.values()),
    )
    streams.add_argument(
        "--out", type=Path, default=None, help="landing dir (default: DATA/landing)"
    )
    streams.add_argument("--limit-rows", type=int, default=None, help="only the first N rows")
    streams.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where downloaded sources are kept (default: $FEEDBACK_PIPELINE_STREAM_CACHE or "
        "~/.cache/feedback_pipeline)",
    )
    streams.set_defaults(handler=_stream)

    backtest = commands.add_parser(
        "backtest", help="replay the retraining policy over history, with its baselines"
    )
    backtest.add_argument("--start", required=True, help="first period start (ISO-8601, UTC)")
    backtest.add_argument("--end", required=True, help="end of the last period (ISO-8601, UTC)")
    backtest.add_argument("--every", type=_duration, default=timedelta(days=7), help="e.g. 7d")
    backtest.add_argument("--settings", type=Path, default=None, help="a settings YAML file")
    backtest.add_argument(
        "--landing",
        type=Path,
        default=None,
        help="ingest these landing files into the backtest's own warehouse (default: copy the "
        "raw tables of DATA/warehouse.duckdb)",
    )
    backtest.add_argument("--out", type=Path, default=None, help="default: DATA/backtest")
    backtest.add_argument("--json", action="store_true", help="print the summary as JSON")
    backtest.set_defaults(handler=_backtest)

    stats = commands.add_parser(
        "stats", help="weekly feedback figures, FP-rate trend, segments and note terms"
    )
    stats.add_argument(
        "--by", action="append", choices=WEEKLY_GROUPS, default=None,
        help="group each week by this (repeatable; default: environment, model_version, variant)",
    )  # fmt: skip
    _analysis_options(stats)
    stats.set_defaults(handler=_stats)

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

    predict = commands.add_parser(
        "predict", help="score a .jsonl, .csv or .parquet file of predictions with the champion"
    )
    predict.add_argument("--input", type=Path, required=True, help="prediction records")
    predict.add_argument(
        "--output", type=Path, required=True, help="one row per input record (.jsonl/.csv/.parquet)"
    )
    predict.add_argument("--version", default=None, help="a model version instead of the champion")
    predict.add_argument("--json", action="store_true", help="print the counts as JSON")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser(
        "serve",
        help="serve the champion over HTTP: /predict (MLflow's scoring JSON), /health, /metrics",
    )
    server.add_server_arguments(serve)
    serve.set_defaults(
        handler=lambda args: server.run(server.config_from_args(args, args.data_dir)) or 0
    )

    promote = commands.add_parser("promote", help="force a version to champion")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    promote.set_defaults(handler=_move)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_dir = (args.data_dir or default_data_dir()).resolve()
    try:
        return args.handler(args)
    except (ValueError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RegistryUnavailable, PromotionLockTimeout) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except duckdb.IOException as error:
        print(
            f"error: the warehouse in {args.data_dir} is busy or unreadable ({error}). "
            "Another process (a Dagster run, `make dev`) holds its write lock: wait for the run "
            "to finish, or stop that process, then retry.",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
