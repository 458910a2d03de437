"""Holdout metrics, bootstrap deltas, plots and the typed evaluation report."""
