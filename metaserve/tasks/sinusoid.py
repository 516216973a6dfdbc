"""Sinusoid regression (Finn et al. 2017, section 5.1) and its families (Devos & Dandi, MALTML).

y = A sin(x - phi), A ~ U[amplitude], phi ~ U[phase], x ~ U[x_range]; K support and Q query points.
In `sinusoid-families` a family fixes phi and its tasks vary A only (the MALTML paper's toy problem).
With `oracle=True` every input is (x, A, phi): the oracle baseline that is told the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from metaserve.tasks.base import Stream, Task, task_rng
from metaserve.tasks.families import Unit, pack_family

Range = tuple[float, float]


@dataclass(frozen=True)
class SinusoidSpace:
    """Task-space parameters of the sinusoid distribution (what a teacher may move)."""

    amplitude: Range = (0.1, 5.0)
    phase: Range = (0.0, math.pi)

    def __post_init__(self) -> None:
        for name in ("amplitude", "phase"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"task space {name}={[lo, hi]} is empty: need low <= high")


def _points(
    rng: np.random.Generator, amp: float, phase: float, n: int, x_range: Range, oracle: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    x = rng.uniform(x_range[0], x_range[1], size=(n, 1))
    inputs = (
        np.concatenate([x, np.full((n, 1), amp), np.full((n, 1), phase)], axis=1) if oracle else x
    )  # [n, 3] or [n, 1]
    return torch.from_numpy(inputs).float(), torch.from_numpy(amp * np.sin(x - phase)).float()


@dataclass(frozen=True)
class Sinusoid:
    """Sinusoid regression tasks with `shots` support and `query` query points."""

    shots: int = 10
    query: int = 10
    x_range: Range = (-5.0, 5.0)
    space: SinusoidSpace = SinusoidSpace()
    kind: str = "regression"
    oracle: bool = False  # inputs (x, A, phi) instead of x

    def sample(
        self, seed: int, step: int, index: int, space: SinusoidSpace | None = None, stream: Stream = "train"
    ) -> Task:
        space = space or self.space
        rng = task_rng(seed, stream, step, index)
        amp = rng.uniform(*space.amplitude)
        phase = rng.uniform(*space.phase)
        return self.task_for(rng, amp, phase)

    def task_for(self, rng: np.random.Generator, amp: float, phase: float) -> Task:
        """A task with known amplitude and phase (the oracle baseline uses them)."""
        sx, sy = _points(rng, amp, phase, self.shots, self.x_range, self.oracle)
        qx, qy = _points(rng, amp, phase, self.query, self.x_range, self.oracle)
        return Task(sx, sy, qx, qy)


@dataclass(frozen=True)
class SinusoidFamilies(Sinusoid):
    """Sinusoid families (Devos & Dandi, MALTML, toy regression): a family draw fixes one phase phi ~ U[phase],
    each of its `tasks_per_family` + `goal_tasks` tasks draws its own amplitude A ~ U[amplitude].

    `sample` returns the whole family (layout in `tasks/families.py`), or with `unit='task'` one task of
    a freshly drawn family: what a learner that ignores families trains on.
    """

    tasks_per_family: int = 5
    goal_tasks: int = 1
    unit: Unit = "family"

    def sample(
        self, seed: int, step: int, index: int, space: SinusoidSpace | None = None, stream: Stream = "train"
    ) -> Task:
        space = space or self.space
        rng = task_rng(seed, stream, step, index)
        phase = rng.uniform(*space.phase)

        def draw() -> Task:
            return self.task_for(rng, rng.uniform(*space.amplitude), phase)

        if self.unit == "task":
            return draw()
        tasks = [draw() for _ in range(self.tasks_per_family)]
        return pack_family(tasks, [draw() for _ in range(self.goal_tasks)])
