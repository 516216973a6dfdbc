"""The unit of work every executor runs: regenerate tasks and sum their contributions, block by block.

With `train.task_block` set (the default for conv4), the meta-batch sum is one fixed floating-point
computation whatever the backend or worker count: task indices form blocks of that many consecutive
tasks, each block is computed by one batched call (the same shapes in every process, so the same
bits: a vmapped kernel's per-task results can depend on the batch size) and summed over its tasks,
and the block sums are added left to right in block order (`fold`). A worker computes whole blocks
and returns each block's sum, so local, 1, 2 or 3 Ray workers, and a slice re-sent after a fault,
all give the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence

from metaserve.algorithms.base import TaskUpdate
from metaserve.algorithms.params import all_finite
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.tasks.base import Task


def sample_slice(learner: Learner, distribution, step: int, indices: Sequence[int], space=None) -> list[Task]:
    """Tasks `indices` of meta-step `step`, rebuilt from the seed, on the learner's device and dtype."""
    seed = learner.config.seed
    return [distribution.sample(seed, step, i, space, "train").to(learner.device, learner.dtype) for i in indices]


def task_blocks(indices: Sequence[int], size: int | None) -> list[list[int]]:
    """Consecutive blocks of `size` task indices (the last one shorter when uneven; None: one task each,
    for callers that regroup them)."""
    idx = [int(i) for i in indices]
    size = size or 1
    return [idx[a : a + size] for a in range(0, len(idx), size)]


def compute_blocks(
    learner: Learner, params: Params, blocks: Sequence[Sequence[int]], tasks: list[Task]
) -> list[TaskUpdate]:
    """The summed update of each block; `tasks` are the blocks' tasks in order."""
    return learner.algorithm.block_updates(params, tasks, [len(b) for b in blocks])


def fold(updates: Sequence[TaskUpdate]) -> TaskUpdate:
    """The left-to-right sum of block updates: the one order every backend adds them in."""
    contribution, metrics, count = dict(updates[0].contribution), dict(updates[0].metrics), updates[0].count
    for u in updates[1:]:
        contribution = {k: v + u.contribution[k] for k, v in contribution.items()}
        metrics = {k: v + u.metrics[k] for k, v in metrics.items()}
        count += u.count
    return TaskUpdate(contribution, metrics, count)


class NonFiniteUpdate(RuntimeError):
    """A contribution held NaN or inf; the message names where it came from."""


def check_finite(update: TaskUpdate, source: str, step: int, indices: Sequence[int]) -> None:
    """Raise NonFiniteUpdate naming the source (worker) and task indices of a NaN/inf contribution."""
    if not all_finite(update.contribution):
        bad = sorted(k for k, v in update.contribution.items() if not bool(v.isfinite().all()))
        raise NonFiniteUpdate(
            f"non-finite contribution at step {step} from {source}, task indices {list(indices)} (parameters {bad})"
        )
