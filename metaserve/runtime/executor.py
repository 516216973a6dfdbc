"""What the learner loop asks of a backend (`Executor`), and the one that `runtime.backend` names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from torch import Tensor

from metaserve.algorithms.base import TaskUpdate
from metaserve.config import Config, RuntimeConfig
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.tasks.base import TaskDistribution


class Executor(Protocol):
    """Computes a meta-step's summed update; the local loop and the Ray workers both implement it."""

    def compute(
        self, params: Params, step: int, indices: Sequence[int], space: object | None = None
    ) -> tuple[TaskUpdate, dict[str, float]]:
        """The summed update of tasks `indices` of meta-step `step`, and timings (worker_time, comm_time)."""
        ...

    def evaluate(
        self,
        params: Params,
        indices: Sequence[int],
        steps: int,
        curve: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Per-episode query curves [len(indices), rows, 2] of meta-test episodes `indices` (evaluation.py);
        `progress(done)` as episodes finish."""
        ...

    def close(self) -> None:
        """Release the workers (a no-op locally)."""
        ...


def worker_bundle(rc: RuntimeConfig) -> dict[str, float]:
    """The Ray resources of one adaptation worker."""
    return {"CPU": rc.cpus_per_worker, **({"GPU": rc.gpus_per_worker} if rc.gpus_per_worker else {})}


def make_executor(config: Config, learner: Learner, distribution: TaskDistribution) -> Executor:
    """The executor of `runtime.backend`."""
    if config.runtime.backend == "ray":
        from metaserve.runtime.ray_executor import RayExecutor, trial_group  # Ray is imported only when used

        group = trial_group(config)  # inside a Tune trial: the workers' bundles were reserved with it
        return RayExecutor(config, group=group, bundle_offset=1) if group is not None else RayExecutor(config)
    from metaserve.runtime.local import LocalExecutor

    return LocalExecutor(learner, distribution)
