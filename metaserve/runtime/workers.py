"""Adaptation workers: Ray actors that regenerate their slice of tasks and return its summed update.

A worker builds the same learner and task distribution as the central learner from the config, takes
its device from its Ray resources (a GPU when Ray assigned one), and answers one call per meta-step.
Calls are idempotent: the same (step, indices) always yields the same update, so the learner may
re-send a slice after a fault and keep one result per slice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import ray
import torch

from metaserve.config import parse_config
from metaserve.evaluation import episode_curves
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.wire import flatten, layout_of, unflatten
from metaserve.runtime.work import compute_blocks, sample_slice


def worker_device() -> torch.device:
    """cuda when Ray gave this actor a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), else cpu."""
    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")


def _slice_key(step: int, indices: Sequence[int], space) -> tuple:
    return step, tuple(int(i) for i in indices), repr(space)


class AdaptationWorker:
    """One adaptation worker (wrapped with `ray.remote` by the executor, with its resources)."""

    def __init__(self, config: dict[str, Any], index: int, num_threads: int = 1):
        torch.set_num_threads(max(1, num_threads))
        self.index = index
        self.device = worker_device()
        cfg = parse_config(config)
        self.learner = build_learner(cfg, self.device)
        self.distribution = build_distribution(cfg)
        self.layout = layout_of(self.learner.initial_params())
        self._next: tuple[tuple, list] | None = None  # (slice key, tasks) sampled ahead

    def compute(self, flat_params: np.ndarray, step: int, blocks: Sequence[Sequence[int]], space) -> Iterator[tuple]:
        """Yields the summed contribution of each block of task indices of `step` (one flat row per block),
        their summed metrics and counts, and the compute seconds; then samples the same slice of step + 1,
        which the learner usually asks for next.

        Called as a Ray streaming generator: the learner has the result at the `yield`, and the sampling
        after it fills the time the worker would otherwise wait for the learner's next call.
        """
        yield self._compute(flat_params, step, blocks, space)
        indices = [i for b in blocks for i in b]
        self._next = (
            _slice_key(step + 1, indices, space),
            sample_slice(self.learner, self.distribution, step + 1, indices, space),
        )

    def graph_step(self, payload: tuple) -> tuple | None:
        """`compute` as a node of the executor's compiled graph: every worker reads the same payload
        (flat params, step, the slices of all workers, space) and takes its own slice."""
        flat_params, step, slices, space = payload
        mine = slices[self.index] if self.index < len(slices) else []
        return self._compute(flat_params, step, mine, space) if mine else None

    def _compute(self, flat_params: np.ndarray, step: int, blocks: Sequence[Sequence[int]], space) -> tuple:
        start = time.perf_counter()
        indices = [i for b in blocks for i in b]
        params = unflatten(flat_params, self.layout, self.device, self.learner.dtype)
        ready, self._next = self._next, None
        # Tasks are pure functions of (seed, step, index, space): a slice sampled ahead is the same slice.
        tasks = (
            ready[1]
            if ready and ready[0] == _slice_key(step, indices, space)
            else sample_slice(self.learner, self.distribution, step, indices, space)
        )
        updates = compute_blocks(self.learner, params, blocks, tasks)
        rows = np.stack([flatten(u.contribution) for u in updates])
        return rows, [u.metrics for u in updates], [u.count for u in updates], time.perf_counter() - start

    def evaluate(self, flat_params: np.ndarray, indices: Sequence[int], steps: int, curve: bool) -> np.ndarray:
        """Per-episode query curves of meta-test episodes `indices` (the learner concatenates the slices)."""
        params = unflatten(flat_params, self.layout, self.device, self.learner.dtype)
        curves = episode_curves(self.learner, params, self.distribution, indices, steps=steps, curve=curve)
        return curves.cpu().numpy()

    def info(self) -> dict[str, Any]:
        """Where this worker runs: node id, device, process id."""
        return {
            "index": self.index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": str(self.device),
            "pid": os.getpid(),
        }
