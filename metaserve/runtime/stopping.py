"""When a run stops before `train.steps`: a wall-clock budget, and patience on meta-validation.

Pure rules the learner loop applies (runtime/loop.py): the budget is checked after every meta-step,
the patience rule after every validation row. The best-so-far record is plain values
({"value", "step", "since"}), so it travels in every checkpoint and a resumed run stops where an
uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from metaserve.config import EarlyStopConfig


@dataclass
class Budget:
    """`seconds` of wall-clock time from `start` (None: unlimited)."""

    seconds: float | None
    start: float = field(default_factory=time.perf_counter)

    def spent(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start >= self.seconds


def improved(value: float, best: float | None, maximise: bool, min_delta: float) -> bool:
    """True when `value` beats `best` by more than `min_delta` (any finite value beats no best yet)."""
    if best is None:
        return not math.isnan(value)
    return value > best + min_delta if maximise else value < best - min_delta


def after_row(record: dict, value: float, step: int, stop: EarlyStopConfig) -> tuple[dict, bool]:
    """The best-so-far record after a validation row of `value` at `step`, and whether the row is the new best.

    `since` counts the rows since the best one; the run stops when it reaches `stop.patience`.
    """
    if improved(value, record.get("value"), stop.maximise, stop.min_delta):
        return {"value": value, "step": step, "since": 0}, True
    return {**record, "since": record.get("since", 0) + 1}, False


def exhausted(record: dict, stop: EarlyStopConfig) -> bool:
    """Patience is used up: `stop.patience` rows in a row without an improvement."""
    return record.get("since", 0) >= stop.patience
