"""The promotion gate as a pure function of metrics and policy data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from feedback_pipeline.settings import GateSettings


@dataclass(frozen=True)
class Decision:
    promote: bool  # the gate passed: the challenger's procedure wins
    applied: bool  # mode is enforce and the alias moves (a promotion or a refresh)
    reason: str
    deciding_metric: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    refresh: bool = False  # the champion's procedure won: its refit on fresh data is champion

    def as_dict(self) -> dict:
        return asdict(self)


def decide(
    gate: GateSettings,
    holdout_rows: int,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    deltas: dict[str, dict[str, float]] | None,
    fair_rows: int | None = None,
    fair_note: str = "",
    procedure_compared: bool = False,
    live_champion: dict[str, float] | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion; every outcome has a reason.

    ``procedure_compared``: ``champion`` holds the champion's procedure fit on the same train
    split. When it wins and clears the floor, ``gate.refresh_champion`` makes its refit on the
    fresh data the champion (``refresh``): the procedure is kept, the model still learns.

    ``fair_rows`` counts the holdout rows the champion never trained on (newer than its data
    watermark; ``fair_note`` says which champion and watermark). None of them: nothing new to
    judge on, keep the champion. Fewer than ``min_holdout_rows``: ``gate.small_fair_holdout``
    blocks, or judges the challenger alone on its whole holdout by the floor of any champion
    (``champion`` and ``deltas`` are then None).

    The floor of any champion, the first one included: AUC >= ``gate.cold_start_min_auc``
    on the holdout. ``live_champion``: the live champion's metrics on the rows newer than it;
    when it is below the floor there too, the world has moved away from every candidate and the
    floor keeps nothing worth keeping, so it does not apply (the comparison decides)."""
    if gate.mode == "always":
        return Decision(True, True, "gate off (mode=always): every candidate is promoted")
    too_few_fair_rows = None
    if fair_rows is not None and fair_rows < gate.min_holdout_rows:
        too_few_fair_rows = (
            f"only {fair_rows} holdout rows are newer than {fair_note} (rows it never trained "
            f"on), fewer than min_holdout_rows={gate.min_holdout_rows}"
        )
    if fair_rows == 0:
        decision = Decision(
            False,
            False,
            f"no holdout row is newer than {fair_note}: no new evidence, the champion has "
            "already learned from everything the challenger saw",
            checks={"fair_holdout_size": False},
        )
    elif too_few_fair_rows is not None and gate.small_fair_holdout == "block":
        decision = Decision(
            False,
            False,
            f"{too_few_fair_rows}: blocked (gate.small_fair_holdout=block)",
            checks={"fair_holdout_size": False},
        )
    elif too_few_fair_rows is not None:
        alone = _decide(gate, holdout_rows, challenger, None, None)
        reason = alone.reason.replace("no champion yet; ", "")
        decision = replace(
            alone,
            reason=f"{too_few_fair_rows}; judged alone (gate.small_fair_holdout=judge_alone): "
            f"{reason}",
        )
    else:
        floor = live_champion is None or live_champion["roc_auc"] >= gate.cold_start_min_auc
        decision = _decide(gate, holdout_rows, challenger, champion, deltas, floor)
        if procedure_compared and not decision.promote and gate.refresh_champion:
            decision = _refresh(gate, decision, champion, floor)
    if gate.mode == "dry_run":
        verdict = (
            "would promote"
            if decision.promote
            else "would refresh the champion's procedure"
            if decision.refresh
            else "would not promote"
        )
        return replace(
            decision, applied=False, reason=f"[dry run, nothing moved] {verdict}: {decision.reason}"
        )
    return decision


def refuse_backdated(gate: GateSettings, decided: Decision, backdated: str) -> Decision:
    """A run whose data ends before the champion's data watermark (an ``as_of`` in the past)
    never replaces it, whatever the metrics say: promoting it would move the served model
    backwards in time. ``promote`` and ``rollback`` are the only ways back, with a reason."""
    prefix = "[dry run, nothing moved] " if gate.mode == "dry_run" else ""
    return Decision(
        False,
        False,
        f"{prefix}backdated: {backdated}; the gate had said: {decided.reason}",
        decided.deciding_metric,
        {**decided.checks, "data_not_older_than_champion": False},
    )


def refuse_contradicting_labels(gate: GateSettings, decided: Decision, weeks: str) -> Decision:
    """Labels the champion ranks backwards, in a contradiction no longer than
    ``gate.quarantine_max_weeks``, are taken for a broken feed: nothing trained on them is
    promoted, and the next retrain leaves them out (they are quarantined). One that lasts
    longer is a new concept (``training.quarantine.persisting_weeks``) and is not refused."""
    prefix = "[dry run, nothing moved] " if gate.mode == "dry_run" else ""
    return Decision(
        False,
        False,
        f"{prefix}labels contradict the champion in the {weeks}: quarantined, the next retrain "
        f"leaves them out (release them with `feedback-pipeline quarantine release`); the gate "
        f"had said: {decided.reason}",
        decided.deciding_metric,
        {**decided.checks, "labels_consistent_with_champion": False},
    )


def _refresh(gate, kept: Decision, champion, floor: bool = True) -> Decision:
    """The challenger lost to the champion's procedure: refit that procedure on the fresh data,
    unless it too is below the floor of any champion (then the old model stays)."""
    if champion is None or kept.checks.get("holdout_size") is False:
        return kept
    checks = {"champion_procedure_min_auc": champion["roc_auc"] >= gate.cold_start_min_auc}
    if not all(checks.values()) and floor:
        reason = (
            f"{kept.reason}; the champion's procedure is below the floor too (AUC "
            f"{champion['roc_auc']:.3f}, needs >= {gate.cold_start_min_auc}): the old champion "
            "stays"
        )
        return replace(kept, reason=reason, checks={**kept.checks, **checks})
    return replace(
        kept,
        applied=True,
        refresh=True,
        reason=f"{kept.reason}; the champion's procedure is kept and refit on the fresh data",
        checks={**kept.checks, **checks},
    )


def _decide(gate, holdout_rows, challenger, champion, deltas, floor: bool = True) -> Decision:
    if holdout_rows < gate.min_holdout_rows:
        return Decision(
            False,
            False,
            f"holdout has {holdout_rows} rows, fewer than min_holdout_rows={gate.min_holdout_rows}",
            checks={"holdout_size": False},
        )
    # The floor every champion must clear, on holdout labels it never trained on: it must
    # rank, AUC >= cold_start_min_auc. Comparing procedures like with like cannot catch a
    # broken training set (a label bug fits the champion's procedure on the same noise), so a
    # model of noise is refused here, whatever the comparison says. Not accuracy against the
    # majority class: the holdout is a few recent days whose class balance the next weeks
    # rarely keep, so that comparison measures the balance more than the model, and refusing
    # on it kept champions far worse than the majority class in the backtests.
    # The floor keeps the old champion only while it still ranks the newest labels (``floor``):
    # when it fails them too, the world moved away from every candidate, and the comparison
    # decides which to refit.
    auc_ok = challenger["roc_auc"] >= gate.cold_start_min_auc
    checks = {"min_auc": auc_ok}
    summary = f"AUC {challenger['roc_auc']:.3f} (needs >= {gate.cold_start_min_auc})"
    if champion is None:
        verdict = "qualifies" if auc_ok else "does not qualify"
        return Decision(
            auc_ok,
            auc_ok,
            f"no champion yet; challenger {verdict}: {summary}",
            "roc_auc" if auc_ok else None,
            checks,
        )
    if not auc_ok and floor:
        return Decision(
            False, False, f"challenger is below the floor of any champion: {summary}", None, checks
        )

    assert deltas is not None
    if gate.rule == "non_inferiority":
        return _non_inferior(gate, challenger, champion, deltas)
    if gate.rule == "log_loss":
        return _lower_log_loss(gate, challenger, champion)
    accuracy_gain = challenger["accuracy"] - champion["accuracy"]
    f1_gain = challenger["f1_weighted"] - champion["f1_weighted"]
    auc_drop = champion["roc_auc"] - challenger["roc_auc"]
    margins = {
        "accuracy": accuracy_gain >= gate.min_accuracy_gain,
        "f1_weighted": f1_gain >= gate.min_f1_gain,
    }
    met = [metric for metric, ok in margins.items() if ok]
    gains = (
        f"accuracy {accuracy_gain:+.3f} (needs +{gate.min_accuracy_gain}), weighted F1 "
        f"{f1_gain:+.3f} (needs +{gate.min_f1_gain})"
    )
    checks = {"margin": bool(met), "auc_guardrail": auc_drop <= gate.max_auc_drop}
    if not met:
        return Decision(False, False, f"no gain large enough: {gains}", None, checks)
    if auc_drop > gate.max_auc_drop:
        return _auc_dropped(gate, auc_drop, gains, met[0], checks)
    # The incumbent rule is an OR of two claims of improvement. Each claim stands on its own
    # evidence: a met margin whose bootstrap lower bound is above 0 decides, whichever it is.
    # A met but noisy accuracy gain neither decides nor vetoes a met and significant F1 gain.
    significant = [metric for metric in met if deltas[metric]["low"] > 0]
    checks["significant"] = bool(significant)
    deciding = (significant or met)[0]
    low = deltas[deciding]["low"]
    if gate.require_significance and not significant:
        bounds = ", ".join(f"{m} {deltas[m]['low']:+.3f}" for m in met)
        return Decision(
            False,
            False,
            f"no met gain is significant: bootstrap lower bound(s) {bounds} <= 0 ({gains})",
            deciding,
            checks,
        )
    return Decision(
        True,
        True,
        f"challenger beats champion on {deciding}: {gains}; bootstrap lower bound {low:+.3f}",
        deciding,
        checks,
    )


def _auc_dropped(gate, auc_drop: float, context: str, deciding: str, checks) -> Decision:
    """The guardrail every rule shares: AUC may not drop by more than ``max_auc_drop``."""
    return Decision(
        False,
        False,
        f"AUC drops by {auc_drop:.3f}, more than max_auc_drop={gate.max_auc_drop} ({context})",
        deciding,
        checks,
    )


def _non_inferior(gate, challenger, champion, deltas) -> Decision:
    """Promote unless the challenger is significantly worse than the champion: under refit the
    challenger stands for the procedure, and a refit on fresher data is what gets promoted."""
    accuracy = deltas["accuracy"]
    auc_drop = champion["roc_auc"] - challenger["roc_auc"]
    not_worse = accuracy["high"] >= -gate.non_inferiority_margin
    checks = {"non_inferior": not_worse, "auc_guardrail": auc_drop <= gate.max_auc_drop}
    interval = (
        f"accuracy delta {accuracy['delta']:+.3f} [{accuracy['low']:+.3f}, "
        f"{accuracy['high']:+.3f}], margin -{gate.non_inferiority_margin}"
    )
    if not not_worse:
        reason = f"challenger is significantly worse: {interval}"
        return Decision(False, False, reason, None, checks)
    if auc_drop > gate.max_auc_drop:
        return _auc_dropped(gate, auc_drop, interval, "roc_auc", checks)
    return Decision(
        True, True, f"challenger is not worse than the champion: {interval}", "accuracy", checks
    )


def _lower_log_loss(gate, challenger, champion) -> Decision:
    """The better procedure on the freshest unseen rows: the challenger's wins when its holdout
    log loss (a proper score: calibration and ranking at once) is no higher than the
    champion's. A point estimate on purpose: with ``refresh_champion`` the loser's price is small
    (the champion's procedure still learns from the fresh data), and the backtest showed that
    switching only on this evidence beats switching on validation alone."""
    delta = challenger["log_loss"] - champion["log_loss"]
    auc_drop = champion["roc_auc"] - challenger["roc_auc"]
    checks = {"log_loss_not_higher": delta <= 0, "auc_guardrail": auc_drop <= gate.max_auc_drop}
    scores = (
        f"holdout log loss {challenger['log_loss']:.4f} vs the champion's procedure "
        f"{champion['log_loss']:.4f} ({delta:+.4f})"
    )
    if delta > 0:
        return Decision(False, False, f"challenger's procedure is worse: {scores}", None, checks)
    if auc_drop > gate.max_auc_drop:
        return _auc_dropped(gate, auc_drop, scores, "roc_auc", checks)
    return Decision(
        True, True, f"challenger's procedure is not worse: {scores}", "log_loss", checks
    )
