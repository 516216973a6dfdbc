"""The local backend: the whole meta-batch in this process. The reference the Ray backend must match."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import Tensor

from metaserve.algorithms.base import TaskUpdate
from metaserve.evaluation import episode_curves
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.runtime.work import check_finite, compute_blocks, fold, sample_slice, task_blocks


class LocalExecutor:
    """Computes every task of a meta-step in the learner's own process."""

    name = "local"

    def __init__(self, learner: Learner, distribution):
        self.learner = learner
        self.distribution = distribution

    def compute(
        self, params: Params, step: int, indices: Sequence[int], space=None
    ) -> tuple[TaskUpdate, dict[str, float]]:
        """Summed update of the meta-batch, and timings (worker compute, communication)."""
        start = time.perf_counter()
        tasks = sample_slice(self.learner, self.distribution, step, indices, space)
        size = self.learner.config.train.block_size(self.learner.config.model.name)
        blocks = task_blocks(indices, size) if size else [list(indices)]
        update = fold(compute_blocks(self.learner, params, blocks, tasks))
        check_finite(update, "the local process", step, indices)
        return update, {"worker_time": time.perf_counter() - start, "comm_time": 0.0}

    def evaluate(
        self,
        params: Params,
        indices: Sequence[int],
        steps: int,
        curve: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Per-episode query curves of meta-test episodes `indices`, in this process."""
        return episode_curves(
            self.learner, params, self.distribution, indices, steps=steps, curve=curve, progress=progress
        )

    def close(self) -> None:
        pass
