"""Public drifting-stream benchmarks as landing files, so the backtest judges the retraining
policy on data nobody here designed.

Each stream is a table of features and a 0/1 label in its published order. It becomes one
prediction per row, ``rows_per_day`` of them a day from ``first_day``, and each row's outcome
``label_delay`` later (``win`` for label 1, ``loss`` for 0). Every source is checked against a
sha256 before a row of it is used: a changed file would silently change every backtest.

* ``weather``: the NOAA weather stream (Elwell and Polikar 2011), committed in ``data/``.
* ``covtype``: forest cover type (Blackard 1998), binarized as LIBSVM's ``covtype.binary``
  (class 2, lodgepole pine, against the rest), read out of the scikit-multiflow 0.4.1 sdist,
  which is downloaded from PyPI once into a cache folder.
* ``sea``: the SEA concepts generator (Street and Kim 2001) with its published drift: four
  concepts ``f1 + f2 <= theta`` for theta 8, 9, 7, 9.5, 10% class noise.
* ``hyperplane``: the rotating hyperplane (Hulten, Spencer and Domingos 2001) with the settings
  of MOA's and scikit-multiflow's generator used in the drift literature: 10 features uniform on
  [0, 1], 2 of whose weights drift by 0.001 per row (each direction reversing with probability
  10%), label ``sum(w x) >= sum(w) / 2``, 5% of labels flipped.
* ``agrawal``: the Agrawal loan generator (Agrawal, Imielinski and Swami 1993) as
  scikit-multiflow's ``AGRAWALGenerator`` writes it (nine features; perturbation 0.05), with
  abrupt drift through its first four labeling functions, 25,000 rows each.
* ``mixed``: the MIXED generator (Gama, Medas, Castillo and Rodrigues 2004): two boolean and two
  numeric features, label by "two of three" conditions with a sine boundary, abrupt drift by
  reversing the label every 20,000 rows, as in that paper's drift experiments.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.simulator.feedback_stream import sequence_ids

DATA = Path(__file__).with_name("data")
WEATHER_CSV = DATA / "weather.csv"
WEATHER_SHA256 = "3c38f05bdc5c4cb115f122414c66976e3662c875d96d7199d9e47fc46aff150e"

SDIST_URL = (
    "https://files.pythonhosted.org/packages/57/53/1c90bc05e4fbf2cb768ed140d7a9bce301d671cce7bdc"
    "15b82522ede1b3e/scikit-multiflow-0.4.1.tar.gz"
)
SDIST_SHA256 = "ed4f791107cb7f789f0bb0620c50e743a4d397905146a4d06c62eb98607aa101"
SDIST_DATASETS = "scikit-multiflow-0.4.1/src/skmultiflow/data/datasets/"
COVTYPE_SHA256 = "ea35ca6820fcbe0bdc6707e9ed31e11a9de84f07d88da73b511c737383c271a6"
CACHE_ENV = "FEEDBACK_PIPELINE_STREAM_CACHE"

SEA_THRESHOLDS = (8.0, 9.0, 7.0, 9.5)
SEA_ROWS_PER_CONCEPT = 15_000
SEA_NOISE = 0.10
SEA_SEED = 2001
SEA_SHA256 = "250296f6ac45cea728787c1c381f1604f0f8377fecd78439d0d7d57213915514"


class StreamSourceError(ValueError):
    """A stream's source is missing, unreachable or not the file the backtests were measured on."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked(data: bytes, expected: str, where: str, fix: str) -> bytes:
    digest = sha256_of(data)
    if digest != expected:
        raise StreamSourceError(f"{where}: sha256 {digest} is not the expected {expected}; {fix}")
    return data


def checked_generator(
    frame: pd.DataFrame, expected: str, where: str, constant: str
) -> pd.DataFrame:
    """A generated stream, refused unless its CSV rendering has the sha256 it was measured with."""
    checked(
        frame.to_csv(index=False).encode(),
        expected,
        where,
        "numpy's generator changed its stream; regenerate with this module's seed and update "
        f"{constant} only after rerunning the backtests",
    )
    return frame


def load_weather(path: Path = WEATHER_CSV) -> pd.DataFrame:
    """The weather stream as shipped (8 measurements and ``target``, 1 = it rained)."""
    data = checked(
        path.read_bytes(),
        WEATHER_SHA256,
        str(path),
        "restore the file from git (or from scikit-multiflow 0.4.1's sdist, see data/README.md)",
    )
    return pd.read_csv(io.BytesIO(data))


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "feedback_pipeline"))


def sdist_member(
    name: str, expected: str, cache: Path, url: str = SDIST_URL, sdist_sha256: str = SDIST_SHA256
) -> bytes:
    """One data file of the scikit-multiflow sdist: from ``cache`` when it is there and checks
    out, else from the sdist (downloaded once into ``cache``, checked, then only ``name`` is
    read out of it; no other member is extracted)."""
    target = cache / name
    if target.exists() and sha256_of(target.read_bytes()) == expected:
        return target.read_bytes()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / Path(url).name
    if not archive.exists() or sha256_of(archive.read_bytes()) != sdist_sha256:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except OSError as error:
            raise StreamSourceError(
                f"could not download {url} ({error}); download it by hand into {cache} "
                f"(or set {CACHE_ENV} to a folder that has it)"
            ) from error
        checked(payload, sdist_sha256, url, "the download is damaged or not the 0.4.1 sdist")
        partial = archive.with_suffix(".partial")
        partial.write_bytes(payload)
        partial.replace(archive)
    with tarfile.open(archive, "r:gz") as sdist:
        try:
            member = sdist.extractfile(SDIST_DATASETS + name)
        except KeyError:
            member = None
        if member is None:
            raise StreamSourceError(f"{archive} has no {SDIST_DATASETS}{name}")
        data = checked(member.read(), expected, f"{archive}:{name}", "delete it and rerun")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return data


def load_covtype(cache: Path) -> pd.DataFrame:
    """Forest cover type in its published order, 54 features, label 1 = lodgepole pine."""
    return binarize_covtype(
        pd.read_csv(io.BytesIO(sdist_member("covtype.csv", COVTYPE_SHA256, cache)))
    )


def binarize_covtype(frame: pd.DataFrame) -> pd.DataFrame:
    """Cover type 2 (lodgepole pine, 49% of cells) against the other six, as LIBSVM's
    ``covtype.binary``: the label a binary pipeline can learn, the features untouched."""
    label = (frame["Cover_Type"] == 2).astype("int64")
    return frame.drop(columns="Cover_Type").assign(label=label)


def sea_concepts(
    rows_per_concept: int = SEA_ROWS_PER_CONCEPT,
    thresholds: tuple[float, ...] = SEA_THRESHOLDS,
    noise: float = SEA_NOISE,
    seed: int = SEA_SEED,
) -> pd.DataFrame:
    """SEA: three features uniform on [0, 10], label ``f1 + f2 <= theta`` (f3 is irrelevant),
    theta changing abruptly between blocks, a share ``noise`` of labels flipped."""
    rng = np.random.default_rng(seed)
    n = rows_per_concept * len(thresholds)
    x = rng.uniform(0.0, 10.0, size=(n, 3)).round(6)
    theta = np.repeat(np.asarray(thresholds), rows_per_concept)
    label = (x[:, 0] + x[:, 1] <= theta) ^ (rng.random(n) < noise)
    return pd.DataFrame(
        {"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": label.astype("int64")}
    )


HYPERPLANE_ROWS = 100_000
HYPERPLANE_SEED = 2001
HYPERPLANE_SHA256 = "a9e982d2363c9fc9ec5ff5f78be17d89903df4e46977ba9fd5c5a0fe7884c75c"


def rotating_hyperplane(
    rows: int = HYPERPLANE_ROWS,
    features: int = 10,
    drifting: int = 2,
    magnitude: float = 0.001,
    reversal: float = 0.10,
    noise: float = 0.05,
    seed: int = HYPERPLANE_SEED,
) -> pd.DataFrame:
    """The rotating hyperplane, vectorised: each drifting weight is a random walk of steps
    ``magnitude`` whose direction reverses with probability ``reversal`` at each row."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(rows, features)).round(6)
    start = rng.uniform(0.0, 1.0, size=features)
    reversals = rng.random((rows, drifting)) < reversal
    direction = np.where(np.cumsum(reversals, axis=0) % 2 == 0, 1.0, -1.0)
    weights = np.broadcast_to(start, (rows, features)).copy()
    # the weights the row is labeled with: the walk up to (not including) this row
    weights[:, :drifting] += magnitude * (np.cumsum(direction, axis=0) - direction)
    label = (x * weights).sum(axis=1) >= weights.sum(axis=1) / 2
    label ^= rng.random(rows) < noise
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    return frame.assign(label=label.astype("int64"))


def load_hyperplane(cache: Path | None = None) -> pd.DataFrame:
    return checked_generator(
        rotating_hyperplane(),
        HYPERPLANE_SHA256,
        "the rotating-hyperplane generator's output",
        "HYPERPLANE_SHA256",
    )


AGRAWAL_FUNCTIONS = (0, 1, 2, 3)  # scikit-multiflow's numbering of the paper's functions 1-4
AGRAWAL_ROWS_PER_CONCEPT = 25_000
AGRAWAL_PERTURBATION = 0.05
AGRAWAL_SEED = 2001
AGRAWAL_SHA256 = "7fe1e860519797afa7f3b0d5980d1be5ff5d979d4d83218469d9d43250b87e25"


def _in(value: np.ndarray, low: float, high: float) -> np.ndarray:
    return (low <= value) & (value <= high)


def agrawal_label(function: int, salary, age, elevel, loan) -> np.ndarray:
    """Label 1 where scikit-multiflow's classification function ``function`` (0-3) says 1."""
    young, middle = age < 40, (age >= 40) & (age < 60)

    def by_age(young_zero, middle_zero, old_zero):
        return np.where(young, young_zero, np.where(middle, middle_zero, old_zero))

    salary_bands = (
        _in(salary, 50_000, 100_000),
        _in(salary, 75_000, 125_000),
        _in(salary, 25_000, 75_000),
    )
    if function == 0:  # "0 if age < 40 or age >= 60 else 1"
        return middle.astype(np.int64)
    if function == 1:
        zero = by_age(*salary_bands)
    elif function == 2:
        zero = by_age(elevel <= 1, _in(elevel, 1, 3), elevel >= 2)
    elif function == 3:
        zero = by_age(
            np.where(elevel <= 1, salary_bands[2], salary_bands[0]),
            np.where(_in(elevel, 1, 3), salary_bands[0], salary_bands[1]),
            np.where(elevel >= 2, salary_bands[0], salary_bands[2]),
        )
    else:
        raise ValueError(f"agrawal function {function}: only 0-3 are used here")
    return (~zero).astype(np.int64)


def agrawal(
    rows_per_concept: int = AGRAWAL_ROWS_PER_CONCEPT,
    functions: tuple[int, ...] = AGRAWAL_FUNCTIONS,
    perturbation: float = AGRAWAL_PERTURBATION,
    seed: int = AGRAWAL_SEED,
) -> pd.DataFrame:
    """Agrawal's nine loan-applicant features, labeled by each function in turn; the numeric
    features are then perturbed by up to ``perturbation`` of their range (clipped), as
    scikit-multiflow's generator does, so the label is noisy given what the model sees."""
    rng = np.random.default_rng(seed)
    n = rows_per_concept * len(functions)
    salary = 20_000 + 130_000 * rng.random(n)
    commission = np.where(salary >= 75_000, 0.0, 10_000 + 75_000 * rng.random(n))
    age = rng.integers(20, 81, n).astype(np.float64)
    elevel = rng.integers(0, 5, n)
    car = rng.integers(0, 20, n)
    zipcode = rng.integers(0, 9, n)
    hvalue = (9 - zipcode) * 100_000 * (0.5 + rng.random(n))
    hyears = rng.integers(1, 31, n).astype(np.float64)
    loan = 500_000 * rng.random(n)
    concept = np.repeat(np.arange(len(functions)), rows_per_concept)
    label = np.zeros(n, dtype=np.int64)
    for index, function in enumerate(functions):  # one vectorised pass per concept
        rows = concept == index
        label[rows] = agrawal_label(function, salary[rows], age[rows], elevel[rows], loan[rows])

    def perturbed(value, low, high, span=None):
        span = (high - low) if span is None else span
        return np.clip(value + span * (2 * (rng.random(n) - 0.5)) * perturbation, low, high)

    frame = pd.DataFrame(
        {
            "salary": perturbed(salary, 20_000, 150_000),
            "commission": np.where(
                commission > 0, perturbed(commission, 10_000, 75_000), commission
            ),
            "age": np.round(perturbed(age, 20, 80)),
            "elevel": elevel,
            "car": car,
            "zipcode": zipcode,
            # clipped to its own range: scikit-multiflow passes the bounds in an order that
            # sets every perturbed house value to 0 or its minimum (unused by functions 0-3)
            "hvalue": perturbed(hvalue, (9 - zipcode) * 100_000 * 0.5, np.inf, 135_000),
            "hyears": np.round(perturbed(hyears, 1, 30)),
            "loan": perturbed(loan, 0, 500_000),
        }
    ).round(2)
    return frame.assign(label=label)


def load_agrawal(cache: Path | None = None) -> pd.DataFrame:
    return checked_generator(
        agrawal(), AGRAWAL_SHA256, "the Agrawal generator's output", "AGRAWAL_SHA256"
    )


MIXED_ROWS_PER_CONCEPT = 20_000
MIXED_CONCEPTS = 4
MIXED_SEED = 2004
MIXED_SHA256 = "6fe88d6f37325c76e60103e71ccc2f4f76e8fe03e2c174af103b7160fac948e3"


def mixed(
    rows_per_concept: int = MIXED_ROWS_PER_CONCEPT,
    concepts: int = MIXED_CONCEPTS,
    seed: int = MIXED_SEED,
) -> pd.DataFrame:
    """MIXED: ``v``, ``w`` boolean, ``x``, ``y`` uniform on [0, 1]; with ``z = y < 0.5 + 0.3
    sin(3 pi x)``, label 0 when two of ``v``, ``w``, ``z`` hold (scikit-multiflow's function 0),
    reversed in every other concept (its function 1)."""
    rng = np.random.default_rng(seed)
    n = rows_per_concept * concepts
    v = (rng.random(n) >= 0.5).astype(np.int64)
    w = (rng.random(n) >= 0.5).astype(np.int64)
    x, y = rng.random(n).round(6), rng.random(n).round(6)
    z = y < 0.5 + 0.3 * np.sin(3 * np.pi * x)
    two_of_three = (v & w).astype(bool) | (v.astype(bool) & z) | (w.astype(bool) & z)
    reversed_concept = np.repeat(np.arange(concepts) % 2 == 1, rows_per_concept)
    label = np.where(reversed_concept, two_of_three, ~two_of_three).astype(np.int64)
    return pd.DataFrame({"v": v, "w": w, "x": x, "y": y, "label": label})


def load_mixed(cache: Path | None = None) -> pd.DataFrame:
    return checked_generator(mixed(), MIXED_SHA256, "the MIXED generator's output", "MIXED_SHA256")


def load_sea(cache: Path | None = None) -> pd.DataFrame:
    return checked_generator(sea_concepts(), SEA_SHA256, "the SEA generator's output", "SEA_SHA256")


@dataclass(frozen=True)
class PublicStream:
    name: str
    description: str
    load: Callable[[Path], pd.DataFrame]  # cache folder -> features and ``label``
    rows_per_day: int
    label_delay: timedelta = timedelta(days=1)
    first_day: date = date(2020, 1, 6)
    file_days: int = 7  # days of predictions per landing file


STREAMS = {
    stream.name: stream
    for stream in (
        PublicStream(
            "weather",
            "NOAA weather, Offutt AFB 1949-1999: 18,159 days, 8 features, rain",
            lambda cache: load_weather().rename(columns={"target": "label"}),
            1,
            timedelta(days=1),
            date(1949, 1, 1),
            365,
        ),
        PublicStream(
            "covtype",
            "forest cover type: 581,012 cells, 54 features, lodgepole pine or not",
            load_covtype,
            4_000,
        ),
        PublicStream(
            "sea",
            "SEA concepts: 60,000 rows, 3 features, 4 abrupt concepts, 10% noise",
            load_sea,
            500,
        ),
        PublicStream(
            "hyperplane",
            "rotating hyperplane: 100,000 rows, 10 features, 2 drifting, 5% noise",
            load_hyperplane,
            1_000,
        ),
        PublicStream(
            "agrawal",
            "Agrawal loans: 100,000 rows, 9 features, 4 abrupt concepts, perturbation 0.05",
            load_agrawal,
            1_000,
        ),
        PublicStream(
            "mixed",
            "MIXED: 80,000 rows, 4 features, the label reversed every 20,000 rows",
            load_mixed,
            1_000,
        ),
    )
}


@dataclass(frozen=True)
class StreamSummary:
    predictions: int
    outcomes: int
    first_prediction: datetime
    last_prediction: datetime
    files: int


def write_stream_landing(
    name: str, landing_dir: Path, cache: Path | None = None, limit_rows: int | None = None
) -> StreamSummary:
    """Write the stream's predictions and delayed outcomes as JSON lines, one file per
    ``file_days`` and kind; an outcome is written with its prediction's file."""
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}: choose one of {', '.join(STREAMS)}")
    stream = STREAMS[name]
    frame = stream.load(cache or default_cache())
    if limit_rows is not None:
        frame = frame.head(limit_rows)
    n = len(frame)
    label = frame.pop("label").to_numpy()
    spacing = pd.Timedelta(days=1) / stream.rows_per_day
    at = pd.Timestamp(stream.first_day) + spacing * np.arange(n)
    at = pd.DatetimeIndex(at).floor("s")
    features = list(frame.columns)
    table = frame.astype("float64").assign(
        prediction_id=sequence_ids(name[0], n, width=6),
        predicted_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        occurred_at=(at + stream.label_delay).strftime("%Y-%m-%dT%H:%M:%SZ"),
        outcome=np.where(label == 1, "win", "loss"),
        chunk=np.arange(n) // (stream.rows_per_day * stream.file_days),
    )
    packed = ", ".join(
        "'{}': \"{}\"".format(f.replace("'", "''"), f.replace('"', '""')) for f in features
    )
    records = {  # one JSON object per row, rendered by DuckDB (set-based, no dict per row)
        "predictions": f"""SELECT prediction_id, predicted_at, 0.5 AS confidence,
                                  {{{packed}}} AS features, '{name}' AS entity_id,
                                  'prod' AS environment""",
        "feedback": """SELECT prediction_id || '-o' AS event_id, prediction_id,
                              'outcome' AS event_type, occurred_at, outcome""",
    }
    files = 0
    with duckdb.connect() as con:
        con.register("stream_rows", table)
        for kind, select in records.items():
            folder = landing_dir / kind
            folder.mkdir(parents=True, exist_ok=True)
            for number, first in enumerate(at[:: stream.rows_per_day * stream.file_days]):
                path = folder / f"{name}_{first:%Y%m%d}.jsonl"
                con.execute(
                    f"COPY ({select} FROM stream_rows WHERE chunk = {number} "
                    f"ORDER BY prediction_id) TO '{path}' (FORMAT json)"
                )
                files += 1
    return StreamSummary(n, n, at[0].to_pydatetime(), at[-1].to_pydatetime(), files)
