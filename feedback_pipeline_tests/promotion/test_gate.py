"""The promotion gate, table-driven."""

from __future__ import annotations

import pytest

from feedback_pipeline.promotion.gate import Decision, decide
from feedback_pipeline.settings import GateSettings


def metrics(accuracy: float, f1: float, auc: float) -> dict[str, float]:
    return {"accuracy": accuracy, "f1_weighted": f1, "roc_auc": auc}


def deltas(accuracy_low: float = 0.01, f1_low: float = 0.01) -> dict:
    return {
        "accuracy": {"delta": 0.0, "low": accuracy_low, "high": 0.1},
        "f1_weighted": {"delta": 0.0, "low": f1_low, "high": 0.1},
        "roc_auc": {"delta": 0.0, "low": -0.01, "high": 0.01},
    }


CHAMPION = metrics(0.70, 0.70, 0.75)
CASES = [
    # (name, gate overrides, holdout rows, challenger, champion, deltas, promote, reason)
    (
        "a champion's procedure fit on the same noise: not worse, but below the floor",
        {"rule": "non_inferiority"},
        500,
        metrics(0.52, 0.5, 0.51),
        metrics(0.52, 0.5, 0.51),
        {k: {"delta": 0.0, "low": 0.0, "high": 0.0} for k in ("accuracy", "f1_weighted")},
        False,
        "challenger is below the floor of any champion: AUC 0.510 (needs >= 0.55)",
    ),
    (
        "cold start qualifies",
        {},
        500,
        metrics(0.72, 0.7, 0.70),
        None,
        None,
        True,
        "no champion yet; challenger qualifies: AUC 0.700 (needs >= 0.55)",
    ),
    (
        "cold start below the majority class but ranking: the floor is AUC",
        {},
        500,
        metrics(0.58, 0.5, 0.70),
        None,
        None,
        True,
        "no champion yet; challenger qualifies",
    ),
    (
        "cold start AUC too low",
        {},
        500,
        metrics(0.65, 0.6, 0.54),
        None,
        None,
        False,
        "no champion yet; challenger does not qualify: AUC 0.540 (needs >= 0.55)",
    ),
    (
        "promote by accuracy",
        {},
        500,
        metrics(0.73, 0.71, 0.76),
        CHAMPION,
        deltas(),
        True,
        "challenger beats champion on accuracy",
    ),
    (
        "promote by F1",
        {},
        500,
        metrics(0.71, 0.74, 0.76),
        CHAMPION,
        deltas(),
        True,
        "challenger beats champion on f1_weighted",
    ),
    (
        "no gain large enough",
        {},
        500,
        metrics(0.71, 0.72, 0.80),
        CHAMPION,
        deltas(),
        False,
        "no gain large enough",
    ),
    (
        "blocked by AUC guardrail",
        {},
        500,
        metrics(0.75, 0.75, 0.73),
        CHAMPION,
        deltas(),
        False,
        "AUC drops by 0.020",
    ),
    (
        "blocked by significance",
        {},
        500,
        metrics(0.75, 0.71, 0.76),
        CHAMPION,
        deltas(accuracy_low=-0.004),
        False,
        "no met gain is significant: bootstrap lower bound(s) accuracy -0.004",
    ),
    (
        # The OR rule: accuracy's margin is met but noisy, F1's margin is met and significant.
        # Each margin is its own claim of improvement; the one with evidence decides.
        "accuracy met but noisy, F1 met and significant: F1 decides",
        {},
        500,
        metrics(0.73, 0.74, 0.76),
        CHAMPION,
        deltas(accuracy_low=-0.004, f1_low=0.006),
        True,
        "beats champion on f1_weighted",
    ),
    (
        "both margins met, neither significant",
        {},
        500,
        metrics(0.73, 0.74, 0.76),
        CHAMPION,
        deltas(accuracy_low=-0.004, f1_low=-0.002),
        False,
        "accuracy -0.004, f1_weighted -0.002",
    ),
    (
        "F1 significant but its margin not met: no claim",
        {},
        500,
        metrics(0.71, 0.72, 0.76),
        CHAMPION,
        deltas(accuracy_low=0.001, f1_low=0.006),
        False,
        "no gain large enough",
    ),
    (
        "significance off",
        {"require_significance": False},
        500,
        metrics(0.75, 0.71, 0.76),
        CHAMPION,
        deltas(accuracy_low=-0.004),
        True,
        "beats champion on accuracy",
    ),
    (
        "holdout too small",
        {},
        150,
        metrics(0.9, 0.9, 0.9),
        CHAMPION,
        deltas(),
        False,
        "holdout has 150 rows, fewer than min_holdout_rows=200",
    ),
    (
        "holdout too small at cold start",
        {},
        10,
        metrics(0.9, 0.9, 0.9),
        None,
        None,
        False,
        "holdout has 10 rows",
    ),
    (
        "margins are data",
        {"min_accuracy_gain": 0.001},
        500,
        metrics(0.705, 0.70, 0.75),
        CHAMPION,
        deltas(),
        True,
        "beats champion on accuracy",
    ),
]


@pytest.mark.parametrize(
    ("name", "gate", "rows", "challenger", "champion", "delta", "promote", "reason"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_gate(name, gate, rows, challenger, champion, delta, promote, reason):
    gate = GateSettings(**{"rule": "superiority", **gate})  # the incumbent rule, table-driven
    decision = decide(gate, rows, challenger, champion, delta)
    assert reason in decision.reason
    assert decision.promote is promote
    assert decision.applied is promote
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("challenger", "promote", "reason"),
    [
        (metrics(0.58, 0.5, 0.70), True, "challenger qualifies: AUC 0.700"),
        (metrics(0.65, 0.6, 0.52), False, "challenger does not qualify: AUC 0.520"),
    ],
)
def test_judged_alone_a_challenger_must_clear_the_floor(challenger, promote, reason):
    """Few fair rows with a champion in place: the challenger, judged alone, must rank."""
    gate = GateSettings(small_fair_holdout="judge_alone")
    decision = decide(gate, 500, challenger, None, None, fair_rows=50, fair_note="v1")
    assert reason in decision.reason
    assert "judged alone" in decision.reason
    assert decision.promote is promote


def test_dry_run_decides_and_reports_but_moves_nothing():
    gate = GateSettings(mode="dry_run", rule="superiority")
    decision = decide(gate, 500, metrics(0.73, 0.71, 0.76), CHAMPION, deltas())
    assert decision.promote is True
    assert decision.applied is False
    assert decision.reason.startswith("[dry run, nothing moved] would promote")


@pytest.mark.parametrize(
    ("accuracy_high", "auc", "promote", "reason"),
    [
        (0.004, 0.76, True, "not worse than the champion"),
        (-0.005, 0.76, True, "not worse than the champion"),  # within the 0.01 margin
        (-0.02, 0.76, False, "significantly worse"),
        (0.02, 0.70, False, "AUC drops by 0.050"),
    ],
)
def test_non_inferiority_promotes_unless_significantly_worse(accuracy_high, auc, promote, reason):
    gate = GateSettings(rule="non_inferiority")
    delta = deltas()
    delta["accuracy"] = {
        "delta": accuracy_high - 0.01,
        "low": accuracy_high - 0.02,
        "high": accuracy_high,
    }
    decision = decide(gate, 500, metrics(0.69, 0.69, auc), CHAMPION, delta)
    assert reason in decision.reason
    assert decision.promote is promote


def scored(accuracy: float, auc: float, log_loss: float) -> dict[str, float]:
    return {"accuracy": accuracy, "f1_weighted": accuracy, "roc_auc": auc, "log_loss": log_loss}


@pytest.mark.parametrize(
    ("challenger", "promote", "refresh", "reason"),
    [
        (scored(0.70, 0.76, 0.520), True, False, "challenger's procedure is not worse"),
        (scored(0.70, 0.76, 0.530), True, False, "(+0.0000)"),  # a tie: no higher, it wins
        (scored(0.71, 0.76, 0.531), False, True, "+0.0010"),  # higher log loss loses
        (scored(0.70, 0.70, 0.500), False, True, "AUC drops by 0.050"),
        (scored(0.50, 0.50, 0.690), False, True, "below the floor of any champion"),
    ],
)
def test_log_loss_rule_switches_procedure_only_on_holdout_evidence(
    challenger, promote, refresh, reason
):
    """Like with like: the challenger's procedure replaces the champion's when its holdout log
    loss is no higher; otherwise the champion's procedure is refit on the fresh data."""
    champion_procedure = scored(0.70, 0.75, 0.530)
    decision = decide(
        GateSettings(rule="log_loss"),
        500,
        challenger,
        champion_procedure,
        deltas(),
        procedure_compared=True,
    )
    assert reason in decision.reason
    assert (decision.promote, decision.refresh, decision.applied) == (
        promote,
        refresh,
        promote or refresh,
    )
    if refresh:
        assert "the champion's procedure is kept and refit on the fresh data" in decision.reason


def test_no_refresh_when_the_champions_procedure_is_below_the_floor_too():
    """A broken training set fits every procedure on noise: the old champion stays."""
    noise = scored(0.52, 0.51, 0.69)
    decision = decide(
        GateSettings(rule="log_loss"), 500, noise, noise, deltas(), procedure_compared=True
    )
    assert (decision.promote, decision.refresh, decision.applied) == (False, False, False)
    assert "the old champion stays" in decision.reason


def test_refresh_off_or_dry_run_moves_nothing():
    def a_losing_challenger(**gate) -> Decision:
        return decide(
            GateSettings(rule="log_loss", **gate),
            500,
            scored(0.70, 0.76, 0.54),
            scored(0.70, 0.75, 0.53),
            deltas(),
            procedure_compared=True,
        )

    kept = a_losing_challenger(refresh_champion=False)
    assert (kept.refresh, kept.applied) == (False, False)
    dry = a_losing_challenger(mode="dry_run")
    assert (dry.refresh, dry.applied) == (True, False)
    assert dry.reason.startswith("[dry run, nothing moved] would refresh the champion's procedure")


@pytest.mark.parametrize(
    ("live_auc", "promote", "reason"),
    [
        (0.80, False, "challenger is below the floor of any champion"),  # the old one still ranks
        (0.47, True, "challenger's procedure is not worse"),  # the world moved from all of them
    ],
)
def test_the_floor_keeps_a_champion_only_while_it_still_ranks_the_newest_labels(
    live_auc, promote, reason
):
    below = scored(0.55, 0.47, 0.70)
    decision = decide(
        GateSettings(rule="log_loss"),
        500,
        below,
        scored(0.55, 0.47, 0.71),
        deltas(),
        procedure_compared=True,
        live_champion=scored(0.55, live_auc, 0.69),
    )
    assert reason in decision.reason
    assert decision.promote is promote


# -- the fair holdout (rows the champion never trained on) and the gate switched off ----------

WINNER = scored(0.80, 0.85, 0.40)  # beats CHAMPION_PROCEDURE on every count
CHAMPION_PROCEDURE = scored(0.70, 0.75, 0.53)
FAIR_NOTE = "champion v3's data watermark 2026-02-10 00:00:00"


def judged_on_fair_rows(fair_rows: int, **gate) -> Decision:
    """A clear winner, judged on a holdout of which ``fair_rows`` rows are new to the champion;
    with too few, the caller passes no champion (the challenger may only be judged alone)."""
    few = fair_rows < GateSettings(**gate).min_holdout_rows
    return decide(
        GateSettings(**gate),
        500,
        WINNER,
        None if few else CHAMPION_PROCEDURE,
        None if few else deltas(),
        fair_rows=fair_rows,
        fair_note=FAIR_NOTE,
        procedure_compared=not few,
    )


@pytest.mark.parametrize("small_fair_holdout", ["block", "judge_alone"])
def test_no_fair_row_keeps_the_champion_whatever_the_challenger(small_fair_holdout):
    decision = judged_on_fair_rows(0, small_fair_holdout=small_fair_holdout)
    assert (decision.promote, decision.applied, decision.refresh) == (False, False, False)
    assert decision.reason == (
        f"no holdout row is newer than {FAIR_NOTE}: no new evidence, the champion has already "
        "learned from everything the challenger saw"
    )
    assert decision.checks == {"fair_holdout_size": False}


def test_too_few_fair_rows_block_promotion_when_the_gate_says_block():
    decision = judged_on_fair_rows(50, small_fair_holdout="block")
    assert (decision.promote, decision.applied) == (False, False)
    assert decision.reason == (
        f"only 50 holdout rows are newer than {FAIR_NOTE} (rows it never trained on), fewer "
        "than min_holdout_rows=200: blocked (gate.small_fair_holdout=block)"
    )
    assert decision.checks == {"fair_holdout_size": False}
    # the same challenger judged alone qualifies: it is the setting that blocks it
    alone = judged_on_fair_rows(50, small_fair_holdout="judge_alone")
    assert alone.promote is True and "judged alone" in alone.reason


@pytest.mark.parametrize("small_fair_holdout", ["block", "judge_alone"])
def test_enough_fair_rows_compare_with_the_champion(small_fair_holdout):
    decision = judged_on_fair_rows(200, small_fair_holdout=small_fair_holdout)  # exactly enough
    assert decision.promote is True
    assert decision.reason.startswith("challenger's procedure is not worse: holdout log loss")


@pytest.mark.parametrize(
    ("rows", "fair_rows", "challenger"),
    [
        (500, None, scored(0.3, 0.2, 2.0)),  # far below the floor, no champion
        (10, None, WINNER),  # a holdout too small to judge on
        (500, 0, WINNER),  # nothing new to judge on
        (500, 50, scored(0.3, 0.2, 2.0)),  # too few fair rows, and below the floor
    ],
)
def test_mode_always_promotes_every_candidate(rows, fair_rows, challenger):
    gate = GateSettings(mode="always", small_fair_holdout="block")
    decision = decide(gate, rows, challenger, None, None, fair_rows=fair_rows, fair_note="v1")
    assert (decision.promote, decision.applied, decision.refresh) == (True, True, False)
    assert decision.reason == "gate off (mode=always): every candidate is promoted"
