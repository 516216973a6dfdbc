"""Adaptation workers: Ray actors that regenerate their slice of tasks and return its summed update.

A worker builds the same learner and task distribution as the central learner from the config, takes
its device from its Ray resources (a GPU when Ray assigned one), and answers one call per meta-step.
Calls are idempotent: the same (step, indices) always yields the same update, so the learner may
re-send a slice after a fault and keep one result per slice.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import ray
import torch

from metaserve.algorithms.base import TaskUpdate
from metaserve.config import parse_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.runtime.work import compute_slice


def worker_device() -> torch.device:
    """cuda when Ray gave this actor a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), else cpu."""
    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")


class AdaptationWorker:
    """One adaptation worker (wrapped with `ray.remote` by the executor, with its resources)."""

    def __init__(self, config: dict[str, Any], index: int, num_threads: int = 1):
        torch.set_num_threads(max(1, num_threads))
        self.index = index
        self.device = worker_device()
        self._die_at_step: int | None = None
        self.configure(config)

    def configure(self, config: dict[str, Any]) -> None:
        """Build the learner and load the task distribution of `config` (once per run)."""
        cfg = parse_config(config)
        self.learner = build_learner(cfg, self.device)
        self.distribution = build_distribution(cfg)

    def compute(self, params: Params, step: int, indices: Sequence[int], space=None) -> tuple[TaskUpdate, float]:
        """Summed update of tasks `indices` of `step` (CPU tensors) and the compute seconds it took."""
        if self._die_at_step == step:
            os._exit(1)  # fault injection for tests: the process dies mid-step
        start = time.perf_counter()
        params = {k: v.to(self.device, self.learner.dtype) for k, v in params.items()}
        update = compute_slice(self.learner, self.distribution, params, step, indices, space)
        update.contribution = {k: v.cpu() for k, v in update.contribution.items()}
        return update, time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """Where this worker runs: node id, device, process id."""
        return {"index": self.index, "node_id": ray.get_runtime_context().get_node_id(), "device": str(self.device), "pid": os.getpid()}

    def die_at_step(self, step: int) -> None:
        """Test hook: exit the process abruptly when asked to compute `step`."""
        self._die_at_step = step
