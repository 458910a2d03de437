"""Batch scoring of prediction files with the champion: ``predict``.

Input records are validated by the ingestion contract itself (the same SQL, the same reasons),
with ``confidence`` and ``predicted_at`` optional since they are what is being produced. Valid
rows are scored in one call of the champion's pyfunc (the serving policy included); invalid rows
get their reason and line number. Every input record is in the output, exactly once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import pandas as pd

from feedback_pipeline.ingest.manifest import PendingFile
from feedback_pipeline.ingest.readers import file_format
from feedback_pipeline.ingest.validation import stage_batch, validate_batch
from feedback_pipeline.warehouse.schema import PREDICTIONS, KindSpec

# The ingestion contract for predictions, minus what scoring produces.
SCORING_CONTRACT: KindSpec = replace(
    PREDICTIONS,
    fields=tuple(
        replace(f, required=False) if f.name in ("confidence", "predicted_at") else f
        for f in PREDICTIONS.fields
    ),
)
OUTPUT_FORMATS = {".jsonl": "JSON", ".csv": "CSV", ".parquet": "PARQUET"}


@dataclass(frozen=True)
class BatchResult:
    rows: int
    scored: int
    rejected: int
    fallbacks: int
    model_version: str
    reasons: dict[str, int]  # rejected rows per reason

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _output_format(path: Path) -> str:
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(
            f"--output {path}: unsupported format {suffix or '(none)'}; use one of "
            f"{', '.join(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[suffix]


def validated_rows(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Temp table ``judged``: every record of ``path``, typed, with a reason if invalid."""
    fmt = file_format(path)
    if fmt is None:
        raise ValueError(f"--input {path}: unsupported format; use .jsonl, .csv or .parquet")
    if not path.is_file():
        raise ValueError(f"--input {path}: no such file")
    data = path.read_bytes()
    pending = PendingFile(path, path.name, data, hashlib.sha256(data).hexdigest(), fmt)
    staged = stage_batch(con, SCORING_CONTRACT.kind, [pending])
    if pending.result is not None:
        raise ValueError(f"--input {path}: {pending.result.error}")
    validate_batch(con, SCORING_CONTRACT, staged)


def score_file(
    input_path: Path,
    output_path: Path,
    model,  # an mlflow.pyfunc.PyFuncModel of the champion (or a given version)
    model_version: str,
) -> BatchResult:
    """Score ``input_path`` into ``output_path`` (format by extension); returns the counts."""
    output_format = _output_format(output_path)
    features = [
        n for n in model.metadata.get_input_schema().input_names() if n != "rule_confidence"
    ]
    structure = json.dumps({name: "DOUBLE" for name in features})
    con = duckdb.connect()  # in memory: the staging tables go with it
    try:
        validated_rows(con, input_path)
        valid = con.execute(
            f"""SELECT line_no, prediction_id,
                       unnest(json_transform(features, '{structure}')), rule_confidence
                FROM judged WHERE reason IS NULL ORDER BY line_no"""
        ).df()
        served = model.predict(valid[[*features, "rule_confidence"]]) if len(valid) else None
        scored = valid[["line_no", "prediction_id"]].assign(
            reason=None, model_version=model_version
        )
        if served is not None:
            scored = pd.concat([scored, served.reset_index(drop=True)], axis=1)
        con.register("scored", scored)
        con.execute(
            """CREATE TEMP TABLE results AS
               SELECT line_no, prediction_id, reason, model_version, probability, calibrated,
                      blended_confidence, decision, fallback, policy_version
               FROM scored
               UNION ALL BY NAME
               SELECT line_no, prediction_id, reason FROM judged WHERE reason IS NOT NULL"""
            if served is not None
            else """CREATE TEMP TABLE results AS
                    SELECT line_no, prediction_id, reason FROM judged WHERE reason IS NOT NULL"""
        )
        output_path.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"COPY (SELECT * FROM results ORDER BY line_no) TO '{output_path}' "
            f"(FORMAT {output_format}{', HEADER' if output_format == 'CSV' else ''})"
        )
        reasons = dict(
            con.execute(
                "SELECT reason, count(*) FROM results WHERE reason IS NOT NULL GROUP BY reason"
            ).fetchall()
        )
        total = con.execute("SELECT count(*) FROM results").fetchall()[0][0]
    finally:
        con.close()
    fallbacks = int(served["fallback"].sum()) if served is not None else 0
    return BatchResult(
        rows=int(total),
        scored=len(valid),
        rejected=int(sum(reasons.values())),
        fallbacks=fallbacks,
        model_version=model_version,
        reasons=reasons,
    )
