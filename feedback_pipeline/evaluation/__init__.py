"""Holdout metrics, bootstrap deltas, plots and the typed evaluation: what was measured, no
decision (``promotion`` decides on it)."""
