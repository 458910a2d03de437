"""``make demo``: lay down a demo landing zone that ends today, run retrain_job end to end with
no run config (as the UI's "Materialize all" or the weekly schedule would), then analytics_job
(feedback stats, the A/B comparison, the next serving policy), and say what happened."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import mlflow

from feedback_pipeline.analytics.ab_test import ab_compare
from feedback_pipeline.analytics.feedback_stats import feedback_stats
from feedback_pipeline.defs.launch import run_job
from feedback_pipeline.ingest.landing_files import landing_files
from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.status import print_status
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION, MODEL_NAME, default_tracking_uri
from feedback_pipeline.serving.policy import store as policies
from feedback_pipeline.settings import default_data_dir, load_settings, parse_as_of
from feedback_pipeline.simulator.feedback_stream import simulate_demo_stream
from feedback_pipeline.warehouse.connection import connect
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES, TRAINING_SET


def show_analytics(data_dir: Path) -> None:
    """What ``feedback-pipeline stats --by environment --since 42d``, ``policy show`` and ``ab
    --control A --treatment B --metric accept_rate`` print, from the same library calls."""
    settings = load_settings()
    as_of = parse_as_of(None)
    con = connect(data_dir / "warehouse.duckdb", read_only=True, lock_timeout=5.0)
    try:
        print("$ feedback-pipeline stats --by environment --since 42d")
        stats = feedback_stats(
            con,
            settings.labeling,
            settings.analytics,
            as_of,
            as_of - timedelta(days=42),
            ("environment",),
        )
        print(stats.markdown())
        print("$ feedback-pipeline policy show")
        served = local_registry(data_dir).active_policy_version()
        active = policies.active_policy(con)
        print(policies.describe(active, served, policies.latest_proposal(con)))
        print("\n$ feedback-pipeline ab --control A --treatment B --metric accept_rate")
        try:
            comparison = ab_compare(
                con, settings.labeling, settings.analytics, as_of, "A", "B", ["accept_rate"]
            )
            print("\n".join(comparison.lines()))
        except ValueError as error:
            print(f"error: {error}")
    finally:
        con.close()


def run_and_say(job_name: str) -> bool:
    """Run ``job_name`` with no run config, as the UI would; say how it went."""
    outcome = run_job(job_name, tags={"trigger": "demo"})
    if not outcome.success:
        print(f"{job_name} failed; see the run in the Dagster UI (`make dev`)", file=sys.stderr)
        print("\n".join(outcome.errors), file=sys.stderr)
        return False
    print(f"{job_name} succeeded (run {outcome.run_id})\n")
    return True


def main() -> int:
    data_dir = default_data_dir()
    landing = data_dir / "landing"
    if not any(landing_files(landing, kind) for kind in ("predictions", "feedback", "baseline")):
        today = datetime.now(UTC).date()
        summary = simulate_demo_stream(landing, today)
        print(
            f"Laid down a demo landing zone in {landing}: {summary.predictions:,} predictions over "
            f"the six weeks before {today}, their feedback and weak labels, and a few deliberately "
            "broken records and files."
        )
    print(f"Running retrain_job on {landing} as of now ...")
    if not run_and_say("retrain_job"):
        return 1
    print_status(data_dir)

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    decision = ledger.recent_events(con, 1).iloc[0]
    sample = con.execute(
        f"""SELECT t.*, l.rule_confidence FROM {TRAINING_SET} t
            JOIN {LABELED_OUTCOMES} l ON l.prediction_id = t.row_id
            WHERE t.split = 'holdout' ORDER BY t.row_id LIMIT 4"""
    ).df()
    con.close()
    print(
        f"\nThis run's decision: {'promoted' if decision.promoted else 'not promoted'} "
        f"({decision.reason})"
    )

    print("\nRunning analytics_job (feedback stats, A/B comparison, serving policy) ...")
    if not run_and_say("analytics_job"):
        return 1
    show_analytics(data_dir)

    mlflow.set_tracking_uri(default_tracking_uri(data_dir))
    champion_uri = f"models:/{MODEL_NAME}@{CHAMPION}"
    try:
        champion = mlflow.pyfunc.load_model(champion_uri)
    except mlflow.exceptions.MlflowException:
        print("No champion in the registry yet.")
    else:
        features = champion.metadata.get_input_schema().input_names()  # the signature's
        rows = sample.reindex(columns=features)
        rows.iloc[-1, 0] = None  # a row the model cannot score: it falls back to rule_confidence
        served = champion.predict(rows)
        print(
            f"\n{champion_uri} loads and serves the active policy (holdout rows; the last one "
            f"misses {features[0]}):\n{served.round(3).to_string(index=False)}"
        )
    print(
        "\nLook around:\n"
        "  make dev     Dagster UI on http://127.0.0.1:3000 (asset graph, metadata, checks);\n"
        '               "Materialize all" retrains as of now on this landing zone\n'
        "  make mlflow  MLflow UI on http://127.0.0.1:5000 (runs, versions, model cards, plots)\n"
        "  make status  this summary again"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
