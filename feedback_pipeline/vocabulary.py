"""The words the data contract, the label policy and the simulator share, defined once."""

from __future__ import annotations

ENVIRONMENTS = ("prod", "dev")
EVENT_TYPES = ("accept", "reject", "undo", "modify", "export", "outcome", "rate")
OUTCOMES = ("win", "loss", "breakeven")
# Human event types in tie-break order among events at the same instant: later wins, so an undo
# always beats the accept it retracts.
HUMAN_PRECEDENCE = (
    "accept",
    "export",
    "modify",
    "rate_neutral",
    "rate_good",
    "rate_bad",
    "reject",
    "undo",
)
# A ``rate`` event is one of three signals by its 1-5 rating (thresholds are label settings).
RATING_SIGNALS = ("rate_good", "rate_neutral", "rate_bad")
# What a label policy maps to a label: the trade outcomes and the human signals.
POLICY_SIGNALS = OUTCOMES + ("reject", "undo", "accept", "export", "modify") + RATING_SIGNALS
LABEL_SOURCES = ("outcome", "explicit", "implicit")
# Sources trusted enough to judge a model on: never weak (implicit or baseline) labels.
HOLDOUT_SOURCES = ("outcome", "explicit")
BASELINE_SOURCE = "baseline"
