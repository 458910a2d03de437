"""The words the data contract, the label policy and the simulator share, defined once."""

from __future__ import annotations

ENVIRONMENTS = ("prod", "dev")
EVENT_TYPES = ("accept", "reject", "undo", "modify", "export", "outcome")
OUTCOMES = ("win", "loss", "breakeven")
# Human event types in tie-break order among events at the same instant: later wins, so an undo
# always beats the accept it retracts.
HUMAN_PRECEDENCE = ("accept", "export", "modify", "reject", "undo")
# What a label policy maps to a label: the trade outcomes and the human event types.
POLICY_SIGNALS = OUTCOMES + ("reject", "undo", "accept", "export", "modify")
LABEL_SOURCES = ("outcome", "explicit", "implicit")
# Sources trusted enough to judge a model on: never weak (implicit or baseline) labels.
HOLDOUT_SOURCES = ("outcome", "explicit")
BASELINE_SOURCE = "baseline"
