"""Blocking asset checks: the accounting invariant of ingestion and the sanity of labels."""

import dagster as dg

from feedback_pipeline import reporting
from feedback_pipeline.assets.ingestion import (
    baseline_examples,
    raw_feedback_events,
    raw_predictions,
)
from feedback_pipeline.assets.labeling import labeled_outcomes
from feedback_pipeline.labeling import LABELED_OUTCOMES
from feedback_pipeline.resources import WarehouseResource


def accounting_check(asset: dg.AssetsDefinition, kind: str) -> dg.AssetChecksDefinition:
    """Per file: read = accepted + duplicates + rejected, the stored rows agree, ids unique."""

    @dg.asset_check(asset=asset, name="records_accounted_for", blocking=True)
    def records_accounted_for(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            violations = reporting.accounting_violations(con, kind)
            files = len(reporting.file_accounting(con, kind))
            repeated = reporting.repeated_ids(con, kind)
        return dg.AssetCheckResult(
            passed=violations.empty and repeated == 0,
            metadata={
                "files_checked": files,
                "repeated_ids": repeated,
                "violations": dg.MetadataValue.md(reporting.markdown(violations)),
            },
        )

    return records_accounted_for


@dg.asset_check(asset=labeled_outcomes, blocking=True)
def labels_are_valid(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """No null label, labels in {0, 1}, positive strengths, one row per prediction."""
    with warehouse.connect(read_only=True) as con:
        problems = con.execute(
            f"""
            SELECT count(*) FILTER (WHERE label IS NULL) AS null_labels,
                   count(*) FILTER (WHERE label NOT IN (0, 1)) AS labels_not_binary,
                   count(*) FILTER (WHERE strength IS NULL OR strength <= 0) AS bad_strengths,
                   count(*) - count(DISTINCT prediction_id) AS repeated_predictions
            FROM {LABELED_OUTCOMES}
            """
        ).df()
    counts = {k: int(v) for k, v in problems.iloc[0].items()}
    return dg.AssetCheckResult(passed=not any(counts.values()), metadata=counts)


asset_checks = [
    accounting_check(raw_predictions, "predictions"),
    accounting_check(raw_feedback_events, "feedback"),
    accounting_check(baseline_examples, "baseline"),
    labels_are_valid,
]
