"""The NOAA weather stream: checked against its checksum, and ingested whole as landing files."""

from __future__ import annotations

import pytest

from feedback_pipeline.cli import main
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.simulator.weather import WEATHER_CSV, load_weather


def test_the_committed_stream_is_the_one_measured():
    frame = load_weather()
    assert frame.shape == (18159, 9)
    assert set(frame["target"].unique()) == {0, 1}


def test_a_changed_file_is_refused_naming_it(tmp_path):
    data = bytearray(WEATHER_CSV.read_bytes())
    data[100] = ord("7") if data[100] != ord("7") else ord("8")
    changed = tmp_path / "weather.csv"
    changed.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{changed}: sha256 .* is not the expected"):
        load_weather(changed)


def test_its_landing_files_are_accepted_whole(data_dir, con, capsys):
    assert main(["--data-dir", str(data_dir), "weather", "--limit-days", "800"]) == 0
    assert "800 daily predictions 1949-01-01 .. 1951-03-11" in capsys.readouterr().out
    for kind in ("predictions", "feedback"):
        ingest_kind(con, data_dir / "landing", kind)
    counts = con.execute(
        """SELECT (SELECT count(*) FROM raw.predictions),
                  (SELECT count(*) FROM raw.feedback_events),
                  (SELECT count(*) FROM raw.rejected_records),
                  (SELECT avg((outcome = 'win')::INTEGER) FROM raw.feedback_events),
                  (SELECT max(occurred_at - p.predicted_at) FROM raw.feedback_events f
                   JOIN raw.predictions p USING (prediction_id))"""
    ).fetchall()[0]
    rain = load_weather().head(800)["target"].mean()
    assert counts[:3] == (800, 800, 0)
    assert abs(counts[3] - rain) < 1e-12
    assert counts[4].days == 1  # each outcome lands the next day
