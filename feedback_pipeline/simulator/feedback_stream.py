"""Synthetic landing data: predictions, feedback events and baseline examples with drift.

Deterministic by seed (each day has its own generator seeded by ``(seed, kind, day)``), one day
of data in memory at a time, vectorised numpy + DuckDB rendering (no Python loop per record).

The world: a deployed model scores items with 8 numeric features. Whether a prediction was
*good* follows a logistic model whose weights drift linearly from ``W_START`` to ``W_END`` over
``drift_days`` (180 by default), while the deployed model keeps scoring with the stale
``W_START``. People accept, export, modify, reject or accept-then-undo (85% of them right);
trades close days later as win, loss or breakeven. An automatic labeler provides weak baseline
labels: it sees only the market features, and 25% of its labels are flipped. Late predictions
land three days after their feedback (orphans until then). A small rate of bad records of every
kind the data contract (``ingest/contract.py``) rejects is mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.simulator.landing_writer import (
    FEATURES,
    TEXT_CORRUPTIONS,
    render_records,
    write_jsonl,
    write_table,
)

MARKET_FEATURES = ("momentum", "volatility", "volume_z", "spread")
W_START = 2.0 * np.array([1.6, -0.8, 0.6, -0.4, 0.0, 0.9, 0.0, 0.5])
W_END = 2.0 * np.array([-0.4, -0.8, 0.6, -0.4, 1.4, 0.2, 0.8, 0.5])
LATE_DAYS = 3
KIND_CODES = {"predictions": 1, "feedback": 2, "baseline": 3}
# Draws added later come from their own generators, so the streams above stay as they were.
EXTRA_CODES = {"variants": 4, "ratings": 5, "label_noise": 6}
# Words people write in their rating notes: some go with good predictions, some with bad ones.
GOOD_TERMS = ("clean entry", "good timing", "solid signal", "nice breakout")
BAD_TERMS = ("late entry", "false breakout", "noisy signal", "wrong direction")
NEUTRAL_TERMS = ("checked", "as expected", "see chart", "")


@dataclass(frozen=True)
class SimulationConfig:
    start: date = date(2026, 1, 5)
    days: int = 60
    predictions_per_day: int = 200
    baseline_per_day: int = 100
    seed: int = 7
    bad_rate: float = 0.01
    dev_share: float = 0.1
    late_share: float = 0.02
    outcome_rate: float = 0.5
    human_rate: float = 0.5
    human_accuracy: float = 0.85
    weak_label_noise: float = 0.25
    file_format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    n_entities: int = 50
    drift_days: int = 180
    variants: tuple[str, ...] = ("A", "B")
    variant_effect: float = 0.0  # added to the good-prediction logit of every variant but the first
    rating_rate: float = 0.0  # share of predictions that get a 1-5 rating with a note
    # A drift episode: from day ``drift_start_day`` (for ``drift_episode_days`` days, None: to
    # the end) ``drift_feature`` is shifted by ``drift_shift`` standard deviations. The world
    # moves with it (the ground truth sees the shifted value), so a model trained before it is
    # both drifted and degraded.
    drift_start_day: int | None = None
    drift_feature: str = FEATURES[0]
    drift_shift: float = 0.0
    drift_episode_days: int | None = None
    # Stress episodes a gate must block, each ``episode_days`` long from its day (None: off):
    # the feedback says the opposite of the truth (``flipped``) or a coin toss (``random``);
    # an upstream feature feed breaks, so predictions and baseline rows carry it ``missing``
    # (null) or ``constant`` (0) while the world still depends on its real value; a burst of
    # class ``class_burst_label``: in the world (``class_burst_mode: world``, almost every
    # prediction is of that class) or in the feedback only (``feedback``: only predictions of
    # that class get any feedback, as when a broker reports only its losses for a week).
    label_noise_day: int | None = None
    label_noise: Literal["flipped", "random"] = "flipped"
    feature_outage_day: int | None = None
    feature_outage: str = FEATURES[0]
    feature_outage_mode: Literal["missing", "constant"] = "missing"
    class_burst_day: int | None = None
    class_burst_label: int = 0
    class_burst_mode: Literal["world", "feedback"] = "world"
    episode_days: int = 7

    def in_episode(self, start_day: int | None, day: int) -> bool:
        """Whether ``day`` falls in the stress episode that starts on ``start_day``."""
        return start_day is not None and start_day <= day < start_day + self.episode_days

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError("days must be >= 1")
        if self.predictions_per_day < 1:
            raise ValueError("predictions_per_day must be >= 1")
        for name in (
            "bad_rate",
            "dev_share",
            "late_share",
            "outcome_rate",
            "human_rate",
            "human_accuracy",
            "weak_label_noise",
            "rating_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("drift_feature", "feature_outage"):
            if getattr(self, name) not in FEATURES:
                raise ValueError(
                    f"{name} must be one of {', '.join(FEATURES)}, got {getattr(self, name)!r}"
                )
        for name in ("label_noise_day", "feature_outage_day", "class_burst_day"):
            day = getattr(self, name)
            if day is not None and not 0 <= day < self.days:
                raise ValueError(f"{name} must be a day of the stream, 0..{self.days - 1}: {day}")
        if self.episode_days < 1:
            raise ValueError(f"episode_days must be >= 1, got {self.episode_days}")
        if self.class_burst_label not in (0, 1):
            raise ValueError(f"class_burst_label must be 0 or 1, got {self.class_burst_label}")

    def drift_shift_on(self, day: int) -> float:
        """The drift episode's shift of ``drift_feature`` on ``day`` (0 outside the episode)."""
        if self.drift_start_day is None or day < self.drift_start_day:
            return 0.0
        if (
            self.drift_episode_days is not None
            and day >= self.drift_start_day + self.drift_episode_days
        ):
            return 0.0
        return self.drift_shift


@dataclass
class SimulationSummary:
    predictions: int = 0
    feedback_events: int = 0
    baseline_examples: int = 0
    bad_records: int = 0
    files: list[str] = field(default_factory=list)


CLASS_BURST_SHIFT = 8.0  # added to (or taken from) the logit: over 90% of one class


def _feature_outage(config: SimulationConfig, day: int, features: pd.DataFrame) -> pd.DataFrame:
    """The features as reported while ``feature_outage`` is broken upstream (else as they are):
    null (a nullable column, so it is written as JSON null) or a constant 0."""
    if not config.in_episode(config.feature_outage_day, day):
        return features
    broken = (
        pd.array([None] * len(features), dtype="Float64")
        if config.feature_outage_mode == "missing"
        else 0.0
    )
    return features.assign(**{config.feature_outage: broken})


def _judged(config: SimulationConfig, day: int, good: np.ndarray) -> np.ndarray:
    """What the feedback (people and outcomes) takes for the truth: the truth, except during
    the label-noise episode (its opposite, or a seeded coin toss)."""
    if not config.in_episode(config.label_noise_day, day):
        return good
    if config.label_noise == "flipped":
        return ~good
    return (
        np.random.default_rng([config.seed, EXTRA_CODES["label_noise"], day]).random(len(good))
        < 0.5
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rng(seed: int, kind: str, day: int) -> np.random.Generator:
    return np.random.default_rng([seed, KIND_CODES[kind], day])


def true_weights(day: int, drift_days: int) -> np.ndarray:
    """The drifting ground truth: the 'good prediction' logit's weights on ``day``; the drift
    from ``W_START`` to ``W_END`` takes ``drift_days`` and then stays."""
    share = min(day / max(drift_days, 1), 1.0)
    return (1.0 - share) * W_START + share * W_END


def _timestamps(day_start: datetime, seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.Timestamp(day_start) + pd.to_timedelta(np.round(seconds), unit="s"))


def sequence_ids(prefix: str, n: int, width: int = 7) -> np.ndarray:
    """``prefix`` + sequence numbers zero-padded to at least ``width`` digits, vectorised."""
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width)).astype(object)


def _feature_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(rng.normal(size=(n, len(FEATURES))).round(4), columns=list(FEATURES))


def predictions_for_day(config: SimulationConfig, day: int) -> tuple[pd.DataFrame, np.ndarray]:
    """One day's predictions and their hidden ground truth (1 = the prediction was good)."""
    rng = _rng(config.seed, "predictions", day)
    n = config.predictions_per_day
    features = _feature_frame(rng, n)
    if shift := config.drift_shift_on(day):  # untouched otherwise: -0.0 stays -0.0
        features[config.drift_feature] += shift
    x = features.to_numpy()
    variant = np.asarray(config.variants, dtype=object)[
        np.random.default_rng([config.seed, EXTRA_CODES["variants"], day]).integers(
            0, len(config.variants), n
        )
    ]
    treated = variant != config.variants[0]
    logit = x @ true_weights(day, config.drift_days) + 0.2 + config.variant_effect * treated
    world_burst = config.class_burst_mode == "world"
    if world_burst and config.in_episode(config.class_burst_day, day):  # almost all of one class
        logit = logit + (CLASS_BURST_SHIFT if config.class_burst_label else -CLASS_BURST_SHIFT)
    good = rng.random(n) < _sigmoid(logit)
    features = _feature_outage(config, day, features)
    day_start = datetime.combine(config.start + timedelta(days=day), datetime.min.time())
    frame = features.assign(
        prediction_id=sequence_ids(f"p{config.start + timedelta(days=day):%Y%m%d}-", n),
        seq=np.arange(n),
        predicted_at=_timestamps(day_start, rng.uniform(0, 86_399, n)),
        confidence=_sigmoid(x @ W_START * 0.8 + rng.normal(0, 0.4, n)).round(4),
        rule_confidence=_sigmoid(x[:, 0] * 0.8 + rng.normal(0, 0.6, n)).round(4),
        ml_enhanced=rng.random(n) < 0.7,
        environment=np.where(rng.random(n) < config.dev_share, "dev", "prod"),
        entity=rng.integers(0, config.n_entities, n),
        model_version=np.where(day < config.days // 2, "v1", "v2"),
        zone_suffix=np.where(rng.random(n) < 0.5, "Z", ""),
        late=rng.random(n) < config.late_share,
        variant=variant,
    )
    return frame, good


def feedback_for_day(
    config: SimulationConfig, day: int, predictions: pd.DataFrame, good: np.ndarray
) -> pd.DataFrame:
    """Human signals within hours and trade outcomes days later, for one day's predictions."""
    rng = _rng(config.seed, "feedback", day)
    n = len(predictions)
    # a feedback burst: only predictions of one class are reported on (the truth decides)
    reported = (
        good == bool(config.class_burst_label)
        if config.class_burst_mode == "feedback" and config.in_episode(config.class_burst_day, day)
        else np.ones(n, dtype=bool)
    )
    good = _judged(config, day, good)
    predicted_at = predictions["predicted_at"].to_numpy()
    env = np.where(rng.random(n) < 0.5, predictions["environment"].to_numpy(), None)
    human_right = rng.random(n) < config.human_accuracy
    says_good = np.where(human_right, good, ~good)
    draw = rng.random(n)
    positive_type = np.select([draw < 0.7, draw < 0.85], ["accept", "export"], "modify")
    negative_type = np.where(draw < 0.7, "reject", "accept")  # accept, then undo below
    human_type = np.where(says_good, positive_type, negative_type)
    has_human = (rng.random(n) < config.human_rate) & reported
    human_at = predicted_at + pd.to_timedelta(np.round(rng.uniform(60, 6 * 3600, n)), unit="s")
    has_undo = has_human & ~says_good & (human_type == "accept")
    undo_at = human_at + pd.to_timedelta(np.round(rng.uniform(60, 7200, n)), unit="s")

    outcome_draw = rng.random(n)
    outcome = np.where(
        good,
        np.where(outcome_draw < 0.9, "win", "breakeven"),
        np.where(outcome_draw < 0.85, "loss", "breakeven"),
    )
    magnitude = np.abs(rng.normal(1.3, 1.0, n))
    return_pct = np.select(
        [outcome == "win", outcome == "loss"], [magnitude, -magnitude], rng.normal(0, 0.05, n)
    ).round(3)
    has_outcome = (rng.random(n) < config.outcome_rate) & reported
    outcome_at = predicted_at + pd.to_timedelta(np.round(rng.uniform(1, 10, n) * 86_400), unit="s")
    confidence = predictions["confidence"].to_numpy()
    ids = predictions["prediction_id"].to_numpy()
    modified = np.where(human_type == "modify", (confidence * rng.normal(1, 0.1, n)).round(4), None)
    source = np.where(rng.random(n) < 0.8, "ui", "api")

    def events(mask: np.ndarray, suffix: str, event_type, at, **extra) -> pd.DataFrame:
        frame = pd.DataFrame(
            {
                "event_id": "e" + ids[mask] + suffix,
                "prediction_id": ids[mask],
                "event_type": np.broadcast_to(event_type, n)[mask],
                "occurred_at": np.asarray(at)[mask],
                "environment": env[mask],
                "source": np.where(suffix == "-o", "broker", source[mask]),
            }
        )
        for name, values in extra.items():
            frame[name] = np.broadcast_to(values, n)[mask]
        return frame

    rating, notes, has_rating, rated_at = _ratings(config, day, good, predicted_at)
    has_rating = has_rating & reported
    frames = [
        events(has_human, "-h", human_type, human_at, modified_value=modified),
        events(has_undo, "-u", "undo", undo_at),
        events(has_outcome, "-o", "outcome", outcome_at, outcome=outcome, return_pct=return_pct),
        events(has_rating, "-r", "rate", rated_at, rating=rating, notes=notes),
    ]
    feedback = pd.concat(frames, ignore_index=True).reindex(
        columns=[*frames[0].columns, "outcome", "return_pct", "rating", "notes"]
    )
    # Outcomes that have not happened by the end of the simulation are not known yet.
    horizon = pd.Timestamp(config.start + timedelta(days=config.days))
    feedback = feedback[pd.to_datetime(feedback["occurred_at"]) < horizon]
    return feedback.sort_values(["occurred_at", "event_id"], ignore_index=True)


def _ratings(
    config: SimulationConfig, day: int, good: np.ndarray, predicted_at: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-5 ratings (4-5 mostly for good predictions, 1-2 for bad, as right as people are) with
    a short note: a term that goes with the judgement and a neutral one."""
    rng = np.random.default_rng([config.seed, EXTRA_CODES["ratings"], day])
    n = len(good)
    has_rating = rng.random(n) < config.rating_rate
    judged_good = np.where(rng.random(n) < config.human_accuracy, good, ~good)
    u = rng.random(n)
    rating = np.where(judged_good, 3 + (u > 0.15) + (u > 0.55), 1 + (u > 0.45) + (u > 0.85))
    term = np.where(
        judged_good,
        np.asarray(GOOD_TERMS, dtype=object)[rng.integers(0, len(GOOD_TERMS), n)],
        np.asarray(BAD_TERMS, dtype=object)[rng.integers(0, len(BAD_TERMS), n)],
    )
    neutral = np.asarray(NEUTRAL_TERMS, dtype=object)[rng.integers(0, len(NEUTRAL_TERMS), n)]
    notes = np.char.strip(np.char.add(np.char.add(term.astype(str), ", "), neutral.astype(str)))
    notes = np.char.rstrip(notes, ",").astype(object)
    rated_at = predicted_at + pd.to_timedelta(np.round(rng.uniform(3600, 2 * 86_400, n)), unit="s")
    return rating.astype(float), notes, has_rating, rated_at


def baseline_for_day(config: SimulationConfig, day: int) -> pd.DataFrame:
    rng = _rng(config.seed, "baseline", day)
    n = config.baseline_per_day
    features = _feature_frame(rng, n)
    if shift := config.drift_shift_on(day):  # untouched otherwise: -0.0 stays -0.0
        features[config.drift_feature] += shift
    # The automatic labeler (forward returns) sees the market features only, not the rest.
    market = np.array([name in MARKET_FEATURES for name in FEATURES])
    weights = true_weights(day, config.drift_days) * market
    good = rng.random(n) < _sigmoid(features.to_numpy() @ weights + 0.2)
    weak = np.where(rng.random(n) < config.weak_label_noise, ~good, good).astype(int)
    features = _feature_outage(config, day, features)
    day_start = datetime.combine(config.start + timedelta(days=day), datetime.min.time())
    return features.assign(
        example_id=sequence_ids(f"b{config.start + timedelta(days=day):%Y%m%d}-", n),
        seq=np.arange(n),
        as_of=_timestamps(day_start, np.full(n, 23 * 3600.0)),
        label=weak,
        entity=rng.integers(0, config.n_entities, n),
    )


def simulate(landing_dir: Path, config: SimulationConfig) -> SimulationSummary:
    """Write ``config.days`` days of landing files under ``landing_dir``; returns counts."""
    summary = SimulationSummary()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}[config.file_format]
    for kind in KIND_CODES:
        (landing_dir / kind).mkdir(parents=True, exist_ok=True)

    def write(kind: str, name: str, records: pd.Series, day: int) -> None:
        path = landing_dir / kind / f"{name}{suffix}"
        if config.file_format == "jsonl":
            corruption = TEXT_CORRUPTIONS[(day + KIND_CODES[kind]) % len(TEXT_CORRUPTIONS)]
            summary.bad_records += write_jsonl(
                path, kind, records, corruption if config.bad_rate > 0 else "none"
            )
        else:
            write_table(con, path, records, config.file_format, kind)
        summary.files.append(path.relative_to(landing_dir).as_posix())

    for day in range(config.days):
        stamp = (config.start + timedelta(days=day)).isoformat()
        predictions, good = predictions_for_day(config, day)
        feedback = feedback_for_day(config, day, predictions, good)
        baseline = baseline_for_day(config, day)
        for kind, frame in (
            ("predictions", predictions),
            ("feedback", feedback),
            ("baseline", baseline),
        ):
            rng = _rng(config.seed + 1_000_003, kind, day)
            records, bad = render_records(con, kind, frame, rng, config.bad_rate)
            summary.bad_records += bad
            on_time = records[~records["late"]]
            write(kind, f"{kind}_{stamp}", on_time["record"], day)
            if kind == "predictions" and records["late"].any():
                landed = (config.start + timedelta(days=day + LATE_DAYS)).isoformat()
                write(
                    kind, f"late_{stamp}_landed_{landed}", records[records["late"]]["record"], day
                )
        summary.predictions += len(predictions)
        summary.feedback_events += len(feedback)
        summary.baseline_examples += len(baseline)
    if config.bad_rate > 0:
        for kind in KIND_CODES:
            (landing_dir / kind / f"empty_{kind}.jsonl").write_bytes(b"")
            (landing_dir / kind / f"README_{kind}.txt").write_text(
                "not a data file: lands as an unsupported extension\n"
            )
    con.close()
    return summary


DEMO_DAYS = 42


def simulate_demo_stream(landing_dir: Path, end: date, seed: int = 7) -> SimulationSummary:
    """The demo's landing zone: six weeks of the drifting stream ending at ``end`` (midnight
    UTC, so every event it writes has happened by the time a run looks at it), with the same
    rate of broken records and files as the committed test sample, an A/B test whose variant B
    is truly better, and ratings with notes for the analytics."""
    config = SimulationConfig(
        start=end - timedelta(days=DEMO_DAYS),
        days=DEMO_DAYS,
        predictions_per_day=60,
        baseline_per_day=30,
        seed=seed,
        variant_effect=0.6,
        rating_rate=0.3,
    )
    return simulate(landing_dir, config)
