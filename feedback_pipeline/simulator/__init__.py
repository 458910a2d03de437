"""A synthetic, drifting feedback stream written as landing files."""

from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate

__all__ = ["SimulationConfig", "simulate"]
