"""``make demo``: run retrain_job on the committed sample, end to end, and say what happened."""

from __future__ import annotations

import sys

import dagster as dg
import duckdb
import mlflow

from feedback_pipeline import ledger
from feedback_pipeline.cli import print_status
from feedback_pipeline.definitions import defs
from feedback_pipeline.jobs import retrain_run_config
from feedback_pipeline.registry import MODEL_NAME, default_tracking_uri
from feedback_pipeline.settings import default_data_dir
from feedback_pipeline.training_set import TRAINING_SET

# The committed sample covers 2026-01-05 .. 2026-02-19; the demo looks at it from just after.
SAMPLE_AS_OF = "2026-02-22T00:00:00Z"


def main() -> int:
    data_dir = default_data_dir()
    print(f"Running retrain_job on {data_dir / 'landing'} as of {SAMPLE_AS_OF} ...")
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("retrain_job").execute_in_process(
            instance=instance,
            # the full log is in the Dagster UI; the console gets warnings and the summary below
            run_config={
                **retrain_run_config(SAMPLE_AS_OF),
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            },
            tags={"trigger": "demo"},
            raise_on_error=False,
        )
    if not result.success:
        print("retrain_job failed; see the run in the Dagster UI (`make dev`)", file=sys.stderr)
        for event in result.all_events:
            if event.is_step_failure:
                print(event.step_failure_data.error.message, file=sys.stderr)
        return 1
    print(f"retrain_job succeeded (run {result.run_id})\n")
    print_status(data_dir)

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    decision = ledger.recent_events(con, 1).iloc[0]
    sample = con.execute(f"SELECT * FROM {TRAINING_SET} WHERE split = 'holdout' LIMIT 3").df()
    con.close()
    print(
        f"\nThis run's decision: {'promoted' if decision.promoted else 'not promoted'} "
        f"({decision.reason})"
    )
    mlflow.set_tracking_uri(default_tracking_uri(data_dir))
    champion_uri = f"models:/{MODEL_NAME}@champion"
    try:
        champion = mlflow.pyfunc.load_model(champion_uri)
    except mlflow.exceptions.MlflowException:
        print("No champion in the registry yet.")
    else:
        features = champion.metadata.get_input_schema().input_names()  # the signature's
        scores = champion.predict(sample[features])["probability"].astype(float).round(3).tolist()
        print(f"{champion_uri} loads and predicts; holdout sample scores: {scores}")
    print(
        "\nLook around:\n"
        "  make dev     Dagster UI on http://127.0.0.1:3000 (asset graph, metadata, checks)\n"
        "  make mlflow  MLflow UI on http://127.0.0.1:5000 (runs, versions, model cards, plots)\n"
        "  make status  this summary again"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
