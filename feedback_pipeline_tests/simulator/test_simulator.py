"""The simulator: deterministic by seed, drifting, with every kind of bad record."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate, true_weights


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


SMALL = SimulationConfig(days=6, predictions_per_day=80, baseline_per_day=40, bad_rate=0.05)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    simulate(tmp_path / "a", SMALL)
    simulate(tmp_path / "b", SMALL)
    simulate(tmp_path / "c", SimulationConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_ground_truth_drifts_over_the_range():
    assert not np.allclose(true_weights(0, 180), true_weights(59, 180))
    assert np.allclose(true_weights(180, 180), true_weights(400, 180))


def test_bad_records_of_every_kind_land_in_rejected_records(con, landing):
    summary = simulate(
        landing,
        SimulationConfig(days=10, predictions_per_day=200, baseline_per_day=100, bad_rate=0.05),
    )
    assert summary.bad_records > 0
    results = [
        r
        for kind in ("predictions", "feedback", "baseline")
        for r in ingest_kind(con, landing, kind)
    ]
    assert {r.status for r in results} == {"ingested", "unsupported"}
    reasons = {
        row[0] for row in con.execute("SELECT DISTINCT reason FROM raw.rejected_records").fetchall()
    }
    for expected in [
        "invalid UTF-8",
        "truncated last line (malformed JSON)",
        "confidence must be a finite number",
        "confidence out of range [0, 1]",
        "missing required field prediction_id",
        "predicted_at must be an ISO-8601 timestamp",
        "environment must be one of prod, dev",
        "features values must be numbers or null",
        "outcome is required when event_type is 'outcome'",
        "label must be 0 or 1",
        "conflicting duplicate: prediction_id repeated in the file, other content",
    ]:
        assert expected in reasons
    duplicates = con.execute("SELECT sum(duplicates) FROM raw.ingested_files").fetchall()[0][0]
    assert duplicates > 0
    crlf = [p for p in (landing / "predictions").glob("*.jsonl") if b"\r\n" in p.read_bytes()]
    assert crlf, "one file per rotation is written with CRLF line endings"


def test_late_predictions_arrive_after_their_feedback(landing):
    simulate(landing, SimulationConfig(days=8, predictions_per_day=300, bad_rate=0.0))
    late = sorted((landing / "predictions").glob("late_*"))
    assert late
    assert not list(landing.rglob("*.txt"))  # no deliberate junk without a bad rate


def test_other_formats(tmp_path):
    for fmt in ("csv", "parquet"):
        config = SimulationConfig(days=2, predictions_per_day=20, file_format=fmt)
        summary = simulate(tmp_path / fmt, config)
        assert any(f.endswith(f".{fmt}") for f in summary.files)
