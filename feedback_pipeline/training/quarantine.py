"""Quarantine of feedback that contradicts the champion: weeks whose labels a sound model ranks
backwards (a label pipeline that flipped its outcomes) are left out of every later training set.

Comparing procedures like with like cannot catch a broken label feed (both fits learn the same
noise), and a floor on the holdout only holds the old champion while the bad week is in it;
afterwards every refit would learn from it for good. So the gate audits the labels the champion
never trained on, week by week (of the prediction): a week on which the champion's AUC is below
0.5 with a one-sided Mann-Whitney p-value under ``gate.quarantine_max_p`` is quarantined.

Real drift can turn a model backwards too: a concept that reverses (the MIXED and Agrawal
benchmark streams do) looks like a flipped feed in its first week. What tells them apart is
persistence: a broken feed is an episode, a new concept stays. A contradiction that runs for
more than ``gate.quarantine_max_weeks`` consecutive weeks is the world changing, and its weeks
are released (``persisting_weeks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from feedback_pipeline.warehouse.connection import table_exists
from feedback_pipeline.warehouse.tables import QUARANTINED_WEEKS


@dataclass(frozen=True)
class ContradictingWeek:
    week_start: datetime  # Monday 00:00 of the predictions' week
    rows: int
    auc: float  # the champion's, on this week's labels (0.5 = no better than chance)
    p_value: float  # one-sided: the champion ranks this week's labels backwards

    def as_dict(self) -> dict:
        return {**asdict(self), "week_start": self.week_start.isoformat()}

    def describe(self) -> str:
        return (
            f"week of {self.week_start:%Y-%m-%d} ({self.rows} labels, champion AUC "
            f"{self.auc:.3f}, p = {self.p_value:.1e})"
        )


def week_starts(times: np.ndarray) -> np.ndarray:
    """Monday 00:00 of each time's ISO week (what DuckDB's ``date_trunc('week', t)`` gives)."""
    days = np.asarray(times, dtype="datetime64[D]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return (days - weekday).astype("datetime64[us]")


def contradicting_weeks(
    event_time: np.ndarray, y: np.ndarray, p: np.ndarray, min_rows: int, max_p: float
) -> list[ContradictingWeek]:
    """The weeks (of ``event_time``) on which the scores ``p`` rank the labels ``y`` backwards:
    AUC below 0.5, one-sided Mann-Whitney p-value below ``max_p``, at least ``min_rows`` rows
    of both classes' worth (weeks with fewer cannot say)."""
    from scipy.stats import mannwhitneyu

    frame = pd.DataFrame({"week": week_starts(event_time), "y": y, "p": p})
    found = []
    for week, rows in frame.groupby("week", sort=True):
        positive = rows["p"].to_numpy()[rows["y"].to_numpy() == 1]
        negative = rows["p"].to_numpy()[rows["y"].to_numpy() == 0]
        if len(rows) < min_rows or not len(positive) or not len(negative):
            continue
        statistic, p_value = mannwhitneyu(positive, negative, alternative="less")
        auc = statistic / (len(positive) * len(negative))
        if auc < 0.5 and p_value < max_p:
            found.append(
                ContradictingWeek(
                    pd.Timestamp(week).to_pydatetime(), len(rows), float(auc), float(p_value)
                )
            )
    return found


def record_quarantine(
    con: duckdb.DuckDBPyConnection,
    model_name: str,
    as_of: datetime,
    champion_version: str | None,
    weeks: Sequence[ContradictingWeek],
) -> None:
    """Add ``weeks`` (a week already quarantined keeps its first finding)."""
    if not weeks:
        return
    con.executemany(
        f"""INSERT INTO {QUARANTINED_WEEKS}
            SELECT $1, $2, $3, $4, $5, $6, $7, now()
            WHERE NOT EXISTS (SELECT 1 FROM {QUARANTINED_WEEKS}
                              WHERE model_name = $1 AND week_start = $2)""",
        [
            [model_name, w.week_start, as_of, champion_version, w.rows, w.auc, w.p_value]
            for w in weeks
        ],
    )


def persisting_weeks(
    found: Sequence[ContradictingWeek], quarantined: Sequence[datetime], max_weeks: int
) -> list[datetime]:
    """The weeks of every run of consecutive contradicting weeks (found now, or quarantined by
    an earlier retrain) that includes a week found now and is longer than ``max_weeks``: a
    contradiction that lasts is a new concept, not a broken feed."""
    found_weeks = {np.datetime64(week.week_start, "us") for week in found}
    weeks = sorted(found_weeks | {np.datetime64(week, "us") for week in quarantined})
    one_week = np.timedelta64(7, "D")
    runs: list[list[np.datetime64]] = []
    for week in weeks:
        if runs and week - runs[-1][-1] == one_week:
            runs[-1].append(week)
        else:
            runs.append([week])
    return [
        pd.Timestamp(week).to_pydatetime()
        for run in runs
        if len(run) > max_weeks and found_weeks.intersection(run)
        for week in run
    ]


def quarantined_weeks(
    con: duckdb.DuckDBPyConnection, model_name: str, as_of: datetime
) -> list[datetime]:
    """The weeks quarantined for ``model_name`` by retrains as of ``as_of`` or earlier, so a
    rerun as of an earlier time builds the set it built then."""
    if not table_exists(con, QUARANTINED_WEEKS):
        return []
    rows = con.execute(
        f"SELECT week_start FROM {QUARANTINED_WEEKS} WHERE model_name = ? AND found_as_of <= ? "
        "ORDER BY week_start",
        [model_name, as_of],
    ).fetchall()
    return [week for (week,) in rows]


def quarantine_table(con: duckdb.DuckDBPyConnection, model_name: str) -> pd.DataFrame:
    """Every quarantined week of ``model_name``, for people."""
    if not table_exists(con, QUARANTINED_WEEKS):
        return pd.DataFrame(
            columns=["week_start", "found_as_of", "champion_version", "rows", "auc", "p_value"]
        )
    return con.execute(
        f"SELECT week_start, found_as_of, champion_version, rows, round(auc, 3) AS auc, p_value "
        f"FROM {QUARANTINED_WEEKS} WHERE model_name = ? ORDER BY week_start",
        [model_name],
    ).df()


def release_quarantine(con: duckdb.DuckDBPyConnection, model_name: str, week: datetime) -> int:
    """Let the week's labels back into training (the feed was right after all); returns how
    many quarantines were lifted (0: the week was not quarantined)."""
    if not table_exists(con, QUARANTINED_WEEKS):
        return 0
    released = con.execute(
        f"DELETE FROM {QUARANTINED_WEEKS} WHERE model_name = ? AND week_start = ? RETURNING 1",
        [model_name, week],
    ).fetchall()
    return len(released)
