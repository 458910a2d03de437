"""Asset checks: ingestion accounting, the landing zone, labels and a usable training set."""

import dagster as dg

from feedback_pipeline.defs.assets.ingest import (
    baseline_examples,
    raw_feedback_events,
    raw_predictions,
)
from feedback_pipeline.defs.assets.labels import labeled_outcomes
from feedback_pipeline.defs.assets.training import training_set
from feedback_pipeline.defs.resources import LandingZoneResource, WarehouseResource
from feedback_pipeline.defs.run_context import RunContextResource
from feedback_pipeline.ingest.landing_files import landing_zone_problems
from feedback_pipeline.labels.outcomes import label_problems
from feedback_pipeline.training.dataset import TrainingSetInfo, training_set_problems
from feedback_pipeline.warehouse import summaries


def accounting_check(asset: dg.AssetsDefinition, kind: str) -> dg.AssetChecksDefinition:
    """Per file: read = accepted + duplicates + rejected, the stored rows agree, ids unique."""

    @dg.asset_check(asset=asset, name="records_accounted_for", blocking=True)
    def records_accounted_for(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            violations = summaries.accounting_violations(con, kind)
            files = len(summaries.file_accounting(con, kind))
            repeated = summaries.repeated_ids(con, kind)
        return dg.AssetCheckResult(
            passed=violations.empty and repeated == 0,
            metadata={
                "files_checked": files,
                "repeated_ids": repeated,
                "violations": dg.MetadataValue.md(summaries.markdown(violations)),
            },
        )

    return records_accounted_for


def landing_check(asset: dg.AssetsDefinition, kind: str) -> dg.AssetChecksDefinition:
    """WARN when the kind's landing folder is missing or empty, or files could not be read:
    a mistyped data dir must not run green on an empty warehouse."""

    @dg.asset_check(asset=asset, name="landing_files_readable")
    def landing_files_readable(
        warehouse: WarehouseResource, landing_zone: LandingZoneResource
    ) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            problems = landing_zone_problems(con, landing_zone.root, kind)
        return dg.AssetCheckResult(
            passed=not problems,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(problems) or "landing files present and readable",
            metadata={"landing_dir": str(landing_zone.root / kind), "problems": len(problems)},
        )

    return landing_files_readable


@dg.asset_check(asset=labeled_outcomes, blocking=True)
def labels_are_valid(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """No null label, labels in {0, 1}, positive strengths, one row per prediction."""
    with warehouse.connect(read_only=True) as con:
        counts = label_problems(con)
    return dg.AssetCheckResult(passed=not any(counts.values()), metadata=counts)


@dg.asset_check(asset=training_set, blocking=True)
def training_set_is_usable(
    training_set: TrainingSetInfo, warehouse: WarehouseResource, run_context: RunContextResource
) -> dg.AssetCheckResult:
    """Both classes in train, validation not empty; says whether the holdout is large enough
    for the gate, or which rule will refuse promotion. Checks the set this run built."""
    gate = run_context.settings().gate
    with warehouse.connect(read_only=True) as con:
        verdict = training_set_problems(con, gate.min_holdout_rows, training_set.content_hash)
    return dg.AssetCheckResult(
        passed=not verdict.problems,
        description="; ".join(verdict.problems) or verdict.holdout_rule,
        metadata={**verdict.counts, "holdout_rule": verdict.holdout_rule},
    )


asset_checks = [
    accounting_check(raw_predictions, "predictions"),
    accounting_check(raw_feedback_events, "feedback"),
    accounting_check(baseline_examples, "baseline"),
    landing_check(raw_predictions, "predictions"),
    landing_check(raw_feedback_events, "feedback"),
    landing_check(baseline_examples, "baseline"),
    labels_are_valid,
    training_set_is_usable,
]
