"""Replay of the retraining policy over history, with its baselines (DESIGN section 12)."""
