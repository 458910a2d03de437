"""``make demo``: run ``ingest_job`` on the committed sample and print what landed."""

from __future__ import annotations

import sys

import dagster as dg

from feedback_pipeline.cli import print_status
from feedback_pipeline.definitions import defs
from feedback_pipeline.settings import default_data_dir


def main() -> int:
    data_dir = default_data_dir()
    print(f"Running ingest_job on {data_dir / 'landing'} ...")
    with dg.DagsterInstance.get() as instance:
        result = defs.get_job_def("ingest_job").execute_in_process(instance=instance)
    if not result.success:
        print("ingest_job failed; see the run in the Dagster UI (`make dev`)", file=sys.stderr)
        return 1
    print(f"ingest_job succeeded (run {result.run_id})\n")
    print_status(data_dir)
    print("\nNext: `make dev` opens the Dagster UI on http://127.0.0.1:3000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
