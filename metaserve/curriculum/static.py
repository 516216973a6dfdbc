"""The static teacher (Shevchuk, "Teaching Your MAML", section IV.A): hand-made stages, easy to hard.

The student trains on stage s until its meta-validation loss has stayed below the stage's threshold
for `patience` consecutive teacher updates, then moves to stage s + 1; the last stage is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StaticState:
    """Where a static curriculum stands (plain ints and floats: checkpoints load with weights_only)."""

    stage: int = 0  # index into the stage list
    streak: int = 0  # consecutive teacher updates with meta-validation loss below the threshold
    updates: int = 0  # teacher updates so far
    last_loss: float = float("nan")  # meta-validation loss of the latest update

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StaticState:
        return cls(int(d["stage"]), int(d["streak"]), int(d["updates"]), float(d["last_loss"]))


def static_update(state: StaticState, loss: float, thresholds: Sequence[float], patience: int) -> StaticState:
    """One teacher update of section IV.A.

    `thresholds[s]` is the loss below which stage s counts as learned (len = number of stages - 1).
    The streak grows while loss < threshold (strictly) and resets otherwise; at `patience` the
    curriculum advances a stage and the streak restarts.
    """
    last = len(thresholds)  # index of the final stage
    if state.stage >= last:
        return StaticState(state.stage, 0, state.updates + 1, float(loss))
    streak = state.streak + 1 if loss < thresholds[state.stage] else 0
    stage = state.stage
    if streak >= patience:
        stage, streak = stage + 1, 0
    return StaticState(stage, streak, state.updates + 1, float(loss))
