"""Feedback events -> one label per prediction, point in time (DESIGN section 5)."""
