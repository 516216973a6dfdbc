"""The unit of work every executor runs: regenerate a slice of tasks and sum their contributions."""
from __future__ import annotations

from typing import Sequence

from metaserve.algorithms.base import TaskUpdate
from metaserve.algorithms.params import all_finite
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.tasks.base import Task


def sample_slice(learner: Learner, distribution, step: int, indices: Sequence[int], space=None) -> list[Task]:
    """Tasks `indices` of meta-step `step`, rebuilt from the seed, on the learner's device and dtype."""
    seed = learner.config.seed
    return [distribution.sample(seed, step, i, space, "train").to(learner.device, learner.dtype) for i in indices]


def compute_slice(learner: Learner, distribution, params: Params, step: int, indices: Sequence[int], space=None) -> TaskUpdate:
    """Summed contribution of tasks `indices` of meta-step `step` (tasks rebuilt from the seed)."""
    return learner.algorithm.batch_update(params, sample_slice(learner, distribution, step, indices, space))


class NonFiniteUpdate(RuntimeError):
    """A contribution held NaN or inf; the message names where it came from."""


def check_finite(update: TaskUpdate, source: str, step: int, indices: Sequence[int]) -> None:
    """Raise NonFiniteUpdate naming the source (worker) and task indices of a NaN/inf contribution."""
    if not all_finite(update.contribution):
        bad = sorted(k for k, v in update.contribution.items() if not bool(v.isfinite().all()))
        raise NonFiniteUpdate(
            f"non-finite contribution at step {step} from {source}, task indices {list(indices)} (parameters {bad})"
        )
