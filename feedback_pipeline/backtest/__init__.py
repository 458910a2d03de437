"""Replay of the retraining policy over history, with its baselines."""
