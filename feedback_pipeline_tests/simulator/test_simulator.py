"""The simulator: deterministic by seed, drifting, with every kind of bad record."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
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


LATE_FILE = re.compile(r"late_(\d{4}-\d{2}-\d{2})_landed_(\d{4}-\d{2}-\d{2})\.jsonl")
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


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_late_predictions_arrive_after_their_feedback(landing):
    config = SimulationConfig(days=8, predictions_per_day=300, bad_rate=0.0, rating_rate=0.3)
    simulate(landing, config)
    assert not list(landing.rglob("*.txt"))  # no deliberate junk without a bad rate
    events = [e for path in (landing / "feedback").glob("*.jsonl") for e in records(path)]
    late = sorted((landing / "predictions").glob("late_*"))
    assert len(late) == config.days  # 2% of 300 a day: some every day
    early, late_ids = set(), set()  # late predictions, those with feedback before they land
    for path in late:
        made, landed = LATE_FILE.fullmatch(path.name).groups()
        landed_at = datetime.fromisoformat(landed)  # the file lands at midnight, UTC
        predictions = records(path)
        ids = {p["prediction_id"] for p in predictions}
        late_ids |= ids
        assert {p["predicted_at"][:10] for p in predictions} == {made}
        on_time = records(landing / "predictions" / f"predictions_{made}.jsonl")
        assert not ids & {p["prediction_id"] for p in on_time}  # they are only in the late file
        # The human signals and ratings (hours to two days after a prediction) all happen
        # before their prediction lands: their feedback is an orphan until then. Only trade
        # outcomes (1-10 days) may come later.
        for event in events:
            if event["prediction_id"] in ids and event["event_type"] != "outcome":
                occurred_at = datetime.fromisoformat(event["occurred_at"].removesuffix("Z"))
                assert occurred_at < landed_at, (path.name, event)
                early.add(event["prediction_id"])
    # a human signal (half of them) or a rating (30%): about 65% of them
    assert len(late_ids) > config.days and len(early) > 0.5 * len(late_ids)
    assert {"reject", "rate", "undo"} <= {e["event_type"] for e in events}


def test_other_formats(tmp_path):
    for fmt in ("csv", "parquet"):
        config = SimulationConfig(days=2, predictions_per_day=20, file_format=fmt)
        summary = simulate(tmp_path / fmt, config)
        assert any(f.endswith(f".{fmt}") for f in summary.files)
