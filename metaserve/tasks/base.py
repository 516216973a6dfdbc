"""What a task is, and how any process regenerates the same one.

A task is a pure function of (seed, stream, step, index, task space): the learner never ships data to
workers, each worker rebuilds its slice of the meta-batch from these numbers alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

Stream = Literal["train", "val", "test"]
STREAM_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Task:
    """One few-shot task: a support set to adapt on and a query set to evaluate on."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Task:
        """Move to a device; floating inputs take `dtype`, integer labels keep theirs."""

        def move(t: Tensor) -> Tensor:
            t = t.to(device)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        return Task(move(self.support_x), move(self.support_y), move(self.query_x), move(self.query_y))


def stack_tasks(tasks: list[Task]) -> Task:
    """Stack same-shaped tasks along a new leading batch dimension (for `torch.func.vmap`)."""
    return Task(
        *(torch.stack([getattr(t, f) for t in tasks]) for f in ("support_x", "support_y", "query_x", "query_y"))
    )


def task_rng(seed: int, stream: Stream, step: int, index: int) -> np.random.Generator:
    """The random stream of one task; identical in every process for the same arguments."""
    if stream not in STREAM_IDS:
        raise ValueError(f"stream={stream!r} is not one of {sorted(STREAM_IDS)}")
    return np.random.default_rng(np.random.SeedSequence([seed, STREAM_IDS[stream], step, index]))


class TaskDistribution(Protocol):
    """A family of tasks sampled from explicit task-space parameters (omega)."""

    kind: Literal["regression", "classification"]
    space: object  # the default task space (a frozen dataclass), which a curriculum teacher may move

    def sample(self, seed: int, step: int, index: int, space: object | None = None, stream: Stream = "train") -> Task:
        """Regenerate task `index` of meta-step `step`; `space=None` means the default space."""
        ...
