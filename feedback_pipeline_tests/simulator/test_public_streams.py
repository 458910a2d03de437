"""Public stream benchmarks: each source checked against its checksum, the sdist downloaded once
and only the named file read out of it, and the streams ingested whole as landing files."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from feedback_pipeline.cli import main
from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.simulator.public_streams import (
    SDIST_DATASETS,
    SEA_THRESHOLDS,
    WEATHER_CSV,
    StreamSourceError,
    agrawal_label,
    binarize_covtype,
    load_agrawal,
    load_hyperplane,
    load_mixed,
    load_sea,
    load_weather,
    sdist_member,
    sha256_of,
)


def test_the_committed_weather_stream_is_the_one_measured():
    frame = load_weather()
    assert frame.shape == (18159, 9)
    assert set(frame["target"].unique()) == {0, 1}


def test_a_changed_file_is_refused_naming_it(tmp_path):
    data = bytearray(WEATHER_CSV.read_bytes())
    data[100] = ord("7") if data[100] != ord("7") else ord("8")
    changed = tmp_path / "weather.csv"
    changed.write_bytes(bytes(data))
    with pytest.raises(StreamSourceError, match=f"{changed}: sha256 .* is not the expected"):
        load_weather(changed)


def test_weather_landing_files_are_accepted_whole(data_dir, con, capsys):
    assert main(["--data-dir", str(data_dir), "stream", "weather", "--limit-rows", "800"]) == 0
    assert "800 predictions of weather 1949-01-01 00:00 .. 1951-03-11 00:00" in (
        capsys.readouterr().out
    )
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


def test_sea_has_its_four_published_concepts_and_ten_percent_noise():
    frame = load_sea()
    rows = len(frame) // len(SEA_THRESHOLDS)
    blocks = [frame.iloc[i * rows : (i + 1) * rows] for i in range(len(SEA_THRESHOLDS))]
    for theta, block in zip(SEA_THRESHOLDS, blocks, strict=True):
        agree = {
            other: ((block["f1"] + block["f2"] <= other) == block["label"]).mean()
            for other in SEA_THRESHOLDS
        }
        assert abs(agree[theta] - 0.9) < 0.01  # the block's own concept, 10% noise
        assert agree[theta] == max(agree.values())


def test_sea_landing_spreads_rows_over_days_with_a_one_day_label_delay(data_dir, con):
    assert main(["--data-dir", str(data_dir), "stream", "sea", "--limit-rows", "1200"]) == 0
    for kind in ("predictions", "feedback"):
        ingest_kind(con, data_dir / "landing", kind)
    per_day, delay, rejected = con.execute(
        """SELECT (SELECT max(n) FROM (SELECT count(*) n FROM raw.predictions
                                       GROUP BY predicted_at::DATE)),
                  (SELECT min(occurred_at - p.predicted_at) FROM raw.feedback_events f
                   JOIN raw.predictions p USING (prediction_id)),
                  (SELECT count(*) FROM raw.rejected_records)"""
    ).fetchall()[0]
    assert (per_day, delay.days, rejected) == (500, 1, 0)


def test_covtype_is_binarized_as_lodgepole_pine_against_the_rest():
    frame = pd.DataFrame({"Elevation": [2596, 2804, 3000], "Cover_Type": [5, 2, 1]})
    binary = binarize_covtype(frame)
    assert binary["label"].tolist() == [0, 1, 0]
    assert list(binary.columns) == ["Elevation", "label"]


def _sdist(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(SDIST_DATASETS + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def sdist_server(tmp_path) -> Iterator[tuple[str, bytes, list[str]]]:
    """A real HTTP server on a loopback port serving a small sdist; yields its URL, the
    archive and the paths requested."""
    archive = _sdist({"covtype.csv": b"Elevation,Cover_Type\n2596,5\n", "elec.csv": b"x\n"})
    served = tmp_path / "www"
    served.mkdir()
    (served / "skm.tar.gz").write_bytes(archive)
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/skm.tar.gz", archive, requested
    finally:
        server.shutdown()
        server.server_close()


def test_the_sdist_is_downloaded_once_and_only_the_named_file_read(tmp_path, sdist_server):
    url, archive, requested = sdist_server
    expected = sha256_of(b"Elevation,Cover_Type\n2596,5\n")
    cache = tmp_path / "cache"
    for _ in range(2):
        data = sdist_member("covtype.csv", expected, cache, url, sha256_of(archive))
        assert data == b"Elevation,Cover_Type\n2596,5\n"
    assert len(requested) == 1
    assert sorted(p.name for p in cache.iterdir()) == ["covtype.csv", "skm.tar.gz"]


def test_a_tampered_download_or_member_is_refused_and_not_cached(tmp_path, sdist_server):
    url, archive, _ = sdist_server
    cache = tmp_path / "cache"
    with pytest.raises(StreamSourceError, match=f"{url}: sha256 .* is not the expected"):
        sdist_member("covtype.csv", "0" * 64, cache, url, "1" * 64)
    assert not (cache / "skm.tar.gz").exists()
    with pytest.raises(StreamSourceError, match=r"skm.tar.gz:covtype.csv: sha256 .* delete it"):
        sdist_member("covtype.csv", "0" * 64, cache, url, sha256_of(archive))
    assert not (cache / "covtype.csv").exists()


def test_an_unreachable_source_says_where_to_put_the_file(tmp_path):
    with pytest.raises(StreamSourceError, match="could not download .* by hand into"):
        sdist_member("covtype.csv", "0" * 64, tmp_path, "http://127.0.0.1:9/skm.tar.gz")


def test_the_hyperplane_rotates():
    """A linear model of the first rows is much worse on the last rows: the concept moved."""
    frame = load_hyperplane()
    X, y = frame.drop(columns="label"), frame["label"]
    early = LogisticRegression(C=100.0).fit(X.iloc[:8000], y.iloc[:8000])
    assert early.score(X.iloc[8000:10000], y.iloc[8000:10000]) > 0.85
    assert early.score(X.iloc[-2000:], y.iloc[-2000:]) < 0.7


def reference_agrawal(function: int, salary: float, age: float, elevel: int) -> int:
    """scikit-multiflow 0.4.1's AGRAWALGenerator classification functions 0-3, row by row."""

    def band(value, low, high):
        return low <= value <= high

    if function == 0:
        return 0 if age < 40 or age >= 60 else 1
    if function == 1:
        if age < 40:
            return 0 if band(salary, 50000, 100000) else 1
        if age < 60:
            return 0 if band(salary, 75000, 125000) else 1
        return 0 if band(salary, 25000, 75000) else 1
    if function == 2:
        if age < 40:
            return 0 if elevel in (0, 1) else 1
        if age < 60:
            return 0 if elevel in (1, 2, 3) else 1
        return 0 if elevel in (2, 3, 4) else 1
    if age < 40:
        if elevel in (0, 1):
            return 0 if band(salary, 25000, 75000) else 1
        return 0 if band(salary, 50000, 100000) else 1
    if age < 60:
        if elevel in (1, 2, 3):
            return 0 if band(salary, 50000, 100000) else 1
        return 0 if band(salary, 75000, 125000) else 1
    if elevel in (2, 3, 4):
        return 0 if band(salary, 50000, 100000) else 1
    return 0 if band(salary, 25000, 75000) else 1


@pytest.mark.parametrize("function", [0, 1, 2, 3])
def test_the_agrawal_labels_are_the_generators_functions(function):
    rng = np.random.default_rng(function)
    salary = np.r_[20_000 + 130_000 * rng.random(400), 25_000, 50_000, 75_000, 100_000, 125_000]
    age = np.r_[rng.integers(20, 81, 400), 39, 40, 59, 60, 80].astype(float)
    elevel = rng.integers(0, 5, len(salary))
    loan = 500_000 * rng.random(len(salary))
    expected = [reference_agrawal(function, *row) for row in zip(salary, age, elevel, strict=True)]
    assert agrawal_label(function, salary, age, elevel, loan).tolist() == expected


def test_the_agrawal_stream_changes_concept_every_25000_rows():
    """A tree of the first concept is good on it and much worse on the next one."""
    frame = load_agrawal()
    X, y = frame.drop(columns="label"), frame["label"]
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(X.iloc[:20_000], y.iloc[:20_000])
    assert tree.score(X.iloc[20_000:25_000], y.iloc[20_000:25_000]) > 0.9
    assert tree.score(X.iloc[25_000:30_000], y.iloc[25_000:30_000]) < 0.6


def test_mixed_is_two_of_three_reversed_every_20000_rows():
    frame = load_mixed()
    z = frame["y"] < 0.5 + 0.3 * np.sin(3 * np.pi * frame["x"])
    v, w = frame["v"].astype(bool), frame["w"].astype(bool)
    two_of_three = (v & w) | (v & z) | (w & z)
    reversed_concept = (frame.index // 20_000) % 2 == 1
    expected = np.where(reversed_concept, two_of_three, ~two_of_three).astype(int)
    assert (frame["label"].to_numpy() == expected).all()
    assert len(frame) == 80_000
