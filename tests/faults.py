"""Fault injection and reconfiguration for the Ray tests: a test-only worker, never in the product.

`TestWorker` is an `AdaptationWorker` that can be told to die mid-step and to rebuild itself for
another config (so one worker group serves several configs and actor start-up is paid once).
Run executors with `RayExecutor(config, worker_class=TestWorker)`.
"""

from __future__ import annotations

import os
import sys

import ray
import ray.cloudpickle

from metaserve.config import Config, config_to_dict
from metaserve.runtime.ray_executor import RayExecutor
from metaserve.runtime.workers import AdaptationWorker

# Ray workers cannot import the tests folder: ship this module's classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class TestWorker(AdaptationWorker):
    """An adaptation worker with fault injection and in-place rebuilding."""

    __test__ = False  # not a pytest test class

    def __init__(self, config: dict, index: int, num_threads: int = 1):
        super().__init__(config, index, num_threads)
        self.doomed_step: int | None = None

    def die_at_step(self, step: int) -> None:
        """Exit the process abruptly when asked to compute `step`."""
        self.doomed_step = step

    def rebuild(self, config: dict) -> None:
        """Become a worker of another config (same resources)."""
        AdaptationWorker.__init__(self, config, self.index)

    def _compute(self, flat_params, step, indices, space):
        if self.doomed_step == step:
            os._exit(1)  # the process dies mid-step
        return super()._compute(flat_params, step, indices, space)


def faulty_executor(config: Config, **kwargs) -> RayExecutor:
    """A RayExecutor whose workers are TestWorkers."""
    return RayExecutor(config, worker_class=TestWorker, **kwargs)


def reconfigure(executor: RayExecutor, config: Config) -> None:
    """Rebuild every worker of `executor` for `config` (which must need the same resources)."""
    ray.get([w.rebuild.remote(config_to_dict(config)) for w in executor.workers])
    executor.config = config


class InjectedFault(RuntimeError):
    """A trial dies right after Tune took its checkpoint."""


def trainable_failing_after(step: int):
    """A sweep trainable whose first run dies right after reporting the checkpoint of `step`."""

    def trainable(params: dict, bases: dict) -> None:
        import metaserve.runtime.tune_trainable as trial_module
        from metaserve.tuning.trainable import sweep_trainable

        real = trial_module.tune.report

        def report(metrics: dict, checkpoint=None) -> None:
            real(metrics, checkpoint=checkpoint)
            if metrics.get("step") == step and metrics.get("start_step") == 0.0 and checkpoint is not None:
                raise InjectedFault(f"injected fault after the checkpoint of step {step}")

        trial_module.tune.report = report  # this trial's own process (Tune does not reuse actors here)
        try:
            sweep_trainable(params, bases)
        finally:
            trial_module.tune.report = real

    trainable.__name__ = trainable.__qualname__ = "sweep_trainable"  # Tuner.restore checks the name it was started with
    return trainable
