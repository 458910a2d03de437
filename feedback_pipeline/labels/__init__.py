"""Feedback events -> one label per prediction, point in time."""
