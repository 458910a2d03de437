"""The ledger's idea of the champion: only rows that say who the champion is count, per model."""

from __future__ import annotations

from feedback_pipeline.promotion import ledger
from feedback_pipeline.promotion.gate import Decision, refuse_backdated
from feedback_pipeline.settings import GateSettings


def test_the_last_champion_ignores_failed_runs_policies_and_other_models(con):
    assert ledger.last_champion(con) is None
    ledger.append_event(con, "retrain", "cold start", True, None, "1")
    # A run killed after it moved the alias to v2 is ledgered as failed with the alias it saw:
    # that row must not stand in for the move, or no repair would ever record it.
    ledger.append_event(con, "failed_retrain", "run failed", False, "2", "2")
    ledger.append_event(con, "policy_applied", "policy v0 -> v1", False, None, None)
    ledger.append_event(con, "retrain", "kept", False, "7", "7", model_name="backtest_x")
    assert ledger.last_champion(con) == "1"
    assert ledger.last_champion(con, "backtest_x") == "7"
    ledger.append_event(con, "repair", "alias ahead of the ledger", True, "1", "2")
    ledger.append_event(con, "rollback", "bad model", True, "2", "1")
    assert ledger.last_champion(con) == "1"
    assert ledger.previous_champion(con, "2") == "1"
    assert ledger.previous_champion(con, "7", "backtest_x") is None


def test_a_backdated_decision_is_refused_whatever_the_gate_said():
    promoted = Decision(True, True, "challenger's procedure is not worse", "log_loss", {"a": True})
    refused = refuse_backdated(GateSettings(), promoted, "newest label 11-26 < watermark 12-03")
    assert (refused.promote, refused.applied) == (False, False)
    assert refused.reason.startswith("backdated: newest label 11-26")
    assert "not worse" in refused.reason
    assert refused.checks == {"a": True, "data_not_older_than_champion": False}
    dry = refuse_backdated(GateSettings(mode="dry_run"), promoted, "older")
    assert dry.reason.startswith("[dry run, nothing moved] backdated: older")
