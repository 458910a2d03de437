"""What the serving policy's stages work on and report: the labeled rows (``PolicyRows``), one
stage's outcome (``StageResult``) and the proposal beside the policy it would replace."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from feedback_pipeline.served_policy import ServingPolicy


@dataclass(frozen=True)
class PolicyRows:
    """Labeled rows in time order with the out-of-sample probability of the model they serve."""

    frame: pd.DataFrame  # the features and rule_confidence, as a consumer sends them
    probability: np.ndarray
    y: np.ndarray
    ml_enhanced: np.ndarray  # 1.0, 0.0 or NaN (unknown)
    won: np.ndarray  # 1.0 win, 0.0 loss or breakeven, NaN (no outcome)
    features: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def part(self, start: float, stop: float) -> PolicyRows:
        rows = slice(int(round(start * len(self))), int(round(stop * len(self))))
        return PolicyRows(
            self.frame.iloc[rows],
            self.probability[rows],
            self.y[rows],
            self.ml_enhanced[rows],
            self.won[rows],
            self.features,
        )


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool
    changed: bool
    reason: str
    fitted_rows: int
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyProposal:
    policy: ServingPolicy  # the proposed values
    current: ServingPolicy  # the policy it would replace
    stages: tuple[StageResult, ...]
    before: dict[str, float]  # the current policy on the held-out rows
    after: dict[str, float]  # the proposal on the same rows
    rows: int
    held_out_rows: int
    held_out_y: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))
    held_out_scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(stage.changed for stage in self.stages)

    @property
    def improves(self) -> bool:
        """Not worse than the current policy on the held-out rows, in the log loss of the
        blended confidence and in the FP rate of the decisions, and better in one of them."""
        loss, fp = self.after["log_loss"], self.after["fp_rate"]
        was_loss, was_fp = self.before["log_loss"], self.before["fp_rate"]
        return loss <= was_loss and fp <= was_fp and (loss < was_loss or fp < was_fp)

    def verdict(self) -> str:
        """Why this proposal should or should not be served, in one line."""
        changed = [s.stage for s in self.stages if s.changed]
        if not changed:
            return "no stage changed a value"
        held_out = (
            f"on {self.held_out_rows} held-out rows log loss {self.before['log_loss']:.4f} -> "
            f"{self.after['log_loss']:.4f}, FP rate {self.before['fp_rate']:.1%} -> "
            f"{self.after['fp_rate']:.1%}"
        )
        better = "better than" if self.improves else "not better than"
        return f"{', '.join(changed)} changed; {held_out}: {better} the active policy"

    def stage_table(self) -> pd.DataFrame:
        return stage_table(self.stages)

    def as_dict(self) -> dict:
        return {
            "policy": self.policy.to_dict(),
            "stages": [asdict(s) for s in self.stages],
            "before": self.before,
            "after": self.after,
            "rows": self.rows,
            "held_out_rows": self.held_out_rows,
        }


def stage_table(stages: Sequence[StageResult]) -> pd.DataFrame:
    """One row per stage: did it run, did it change a value, why, before and after."""
    return pd.DataFrame(
        [
            {
                "stage": s.stage,
                "ran": s.ran,
                "changed": s.changed,
                "fitted_rows": s.fitted_rows,
                "before": _short(s.before),
                "after": _short(s.after),
                "reason": s.reason,
            }
            for s in stages
        ]
    )


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
