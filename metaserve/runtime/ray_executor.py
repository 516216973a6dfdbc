"""The Ray backend: a placement group of adaptation workers and the learner's side of each round trip.

Per meta-step the meta-parameters go to the object store once; each worker gets (params ref, step,
its slice of task indices) and returns the sum of its slice's contributions. Slices are summed in
slice order, so the result does not depend on which worker computed which slice; a slice whose
worker died is re-sent to another (or the restarted) worker, giving exactly the fault-free result.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from metaserve.algorithms.base import TaskUpdate
from metaserve.config import Config, config_to_dict
from metaserve.evaluation import episode_curves
from metaserve.experiment import build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.runtime.cluster import connect
from metaserve.runtime.executor import worker_bundle
from metaserve.runtime.graph import GraphBroken, StepGraph
from metaserve.runtime.wire import Layout, flatten, layout_of, unflatten
from metaserve.runtime.work import check_finite, fold, task_blocks
from metaserve.runtime.workers import AdaptationWorker

INLINE_BYTES = 100 * 1024  # Ray passes arguments up to 100 KiB inline with the call


class WorkersUnavailable(RuntimeError):
    """No adaptation worker could be had for `runtime.worker_wait_s` seconds."""


def trial_group(config: Config) -> PlacementGroup | None:
    """The placement group this process runs in when it holds a learner bundle plus one per worker."""
    if not ray.is_initialized():
        return None
    group = ray.util.get_current_placement_group()
    if group is None or len(group.bundle_specs) != 1 + config.runtime.num_workers:
        return None
    return group


def worker_slices(blocks: Sequence[Sequence[int]], n: int) -> list[list[list[int]]]:
    """Split blocks of task indices into at most n contiguous, non-empty runs of whole blocks whose task
    counts are as even as whole blocks allow."""
    blocks = [[int(i) for i in b] for b in blocks]
    k = min(n, len(blocks))
    cum = list(itertools.accumulate((len(b) for b in blocks), initial=0))  # tasks before block j
    cuts = [0]
    for s in range(1, k):  # each cut nearest its share of the tasks, leaving a block for every later slice
        options = range(cuts[-1] + 1, len(blocks) - (k - s) + 1)
        cuts.append(min(options, key=lambda j: (abs(cum[j] - cum[-1] * s / k), -j)))  # ties: earlier slices longer
    cuts.append(len(blocks))
    return [blocks[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def combine(
    results: list[tuple[int, tuple]], layout: Layout, device: torch.device, step: int, slices: list[list[list[int]]]
) -> TaskUpdate:
    """One update from the block rows of every slice, folded in block order (so the sum never depends on
    which worker ran what, or how many there are); a NaN/inf block names its worker and tasks."""
    updates = []
    for s, (worker, (rows, metrics, counts, _)) in enumerate(results):
        for b, row in enumerate(rows):
            update = TaskUpdate(unflatten(row, layout, device), metrics[b], counts[b])
            if not np.isfinite(row).all():
                check_finite(update, f"worker {worker}", step, slices[s][b])
            updates.append(update)
    return fold(updates)


class RayExecutor:
    """Runs each meta-step's tasks on `runtime.num_workers` Ray actors."""

    name = "ray"

    def __init__(
        self,
        config: Config,
        group: PlacementGroup | None = None,
        bundle_offset: int = 0,
        worker_class: type = AdaptationWorker,
    ):
        rc = config.runtime
        connect(rc.address, int(np.ceil(rc.num_workers * rc.cpus_per_worker)))
        self.config = config
        self.wait_s = rc.worker_wait_s
        self._own_group = group is None
        bundle = worker_bundle(rc)
        self.group = group or placement_group([bundle] * rc.num_workers, strategy=rc.placement_strategy)
        try:
            ray.get(self.group.ready(), timeout=self.wait_s)
        except GetTimeoutError:
            self.close()
            raise WorkersUnavailable(
                f"could not reserve {rc.num_workers} workers x {bundle} within runtime.worker_wait_s={self.wait_s}s; "
                f"the cluster has {ray.cluster_resources()}"
            ) from None
        remote = ray.remote(worker_class).options
        cfg = config_to_dict(config)
        self.workers = [
            remote(
                num_cpus=rc.cpus_per_worker,
                num_gpus=rc.gpus_per_worker,
                max_restarts=-1,
                max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.group, placement_group_bundle_index=bundle_offset + i
                ),
            ).remote(cfg, i, max(1, int(rc.cpus_per_worker)))
            for i in range(rc.num_workers)
        ]
        self._graph: StepGraph | None = None
        self._down: dict[int, ray.ObjectRef | None] = {}  # workers found dead -> their pending liveness probe
        self._recent: deque[float] = deque(maxlen=5)  # the last steps' worker compute times
        self._graph_retry: tuple[int, int] | None = (
            None  # (step of the next build attempt, steps to wait after a failed one)
        )
        try:
            self.worker_info()  # wait until every worker has built its learner and loaded its data
            self._want_graph()
        except BaseException:
            self.close()
            raise

    def _want_graph(self) -> None:
        """Build the compiled graph now if `runtime.transport` asks for one."""
        wanted = self.config.runtime.transport == "compiled-graph"
        self._graph_retry = (0, 1) if wanted else None
        if wanted:
            self._graph_ready(0)

    def compute(
        self, params: Params, step: int, indices: Sequence[int], space=None
    ) -> tuple[TaskUpdate, dict[str, float]]:
        """Summed update of the meta-batch, and timings (max worker compute, communication overhead)."""
        start = time.perf_counter()
        flat = flatten(params)
        size = self.config.train.block_size(self.config.model.name)
        slices = worker_slices(task_blocks(indices, size), len(self.workers))
        if size is None:  # one block per worker
            slices = [[[i for b in s for i in b]] for s in slices]
        results = self._by_graph(flat, step, slices, space) if self._graph_ready(step) else None
        if results is None:
            results = self._by_calls(flat, step, slices, space)
        update = combine(results, layout_of(params), next(iter(params.values())).device, step, slices)
        worker_time = max(r[3] for _, r in results)
        self._recent.append(worker_time)
        return update, {"worker_time": worker_time, "comm_time": time.perf_counter() - start - worker_time}

    def _by_graph(self, flat: np.ndarray, step: int, slices: list[list[int]], space) -> list[tuple[int, tuple]] | None:
        """(worker, result) per slice through the compiled graph; None when the graph broke."""
        try:
            outs = self._graph.run((flat, step, slices, space), self.wait_s, 0.9 * min(self._recent, default=0.0))
        except GraphBroken as err:
            warnings.warn(f"step {step}: the compiled graph broke ({err}); this step goes by actor calls", stacklevel=3)
            self._graph, self._graph_retry = None, (step + 1, 1)
            return None
        return [(s, outs[s]) for s in range(len(slices))]

    def _by_calls(self, flat: np.ndarray, step: int, slices: list[list[int]], space) -> list[tuple[int, tuple]]:
        """(worker, result) per slice by actor calls; a dead worker's slice is re-sent to a worker known to be up."""
        # Large parameter sets go to the object store once per step; small ones travel inline, which is cheaper.
        ref = ray.put(flat) if flat.nbytes > INLINE_BYTES else flat
        deadline = time.monotonic() + self.wait_s
        pending = {}  # call in flight -> (slice, attempt, worker)
        for s in range(len(slices)):
            worker = self._target(s, deadline)
            pending[self._send(worker, ref, step, slices[s], space)] = (s, 0, worker)
        results: dict[int, tuple[int, tuple]] = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise WorkersUnavailable(
                    f"no adaptation worker answered for runtime.worker_wait_s={self.wait_s}s at step {step}"
                )
            s, attempt, worker = pending.pop(done[0])
            try:
                result = ray.get(next(done[0]))
            except (RayActorError, StopIteration):  # the worker died (before its item): skip it until it answers again
                self._down.setdefault(worker, None)
                retry = self._target(s + attempt + 1, deadline)
                pending[self._send(retry, ref, step, slices[s], space)] = (s, attempt + 1, retry)
                continue
            self._down.pop(worker, None)
            results.setdefault(s, (worker, result))  # keep one result per slice
            deadline = time.monotonic() + self.wait_s
        return [results[s] for s in range(len(slices))]

    def evaluate(
        self,
        params: Params,
        indices: Sequence[int],
        steps: int,
        curve: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Per-episode query curves of meta-test episodes `indices`, spread over the workers in contiguous
        slices; a slice whose worker fails is computed here instead (episodes are pure functions of their index)."""
        flat = flatten(params)
        ref = ray.put(flat) if flat.nbytes > INLINE_BYTES else flat
        workers = self._live_workers() or list(range(len(self.workers)))
        slices = [[i for b in s for i in b] for s in worker_slices(task_blocks(indices, 1), len(workers))]
        calls = [self.workers[w].evaluate.remote(ref, sl, steps, curve) for w, sl in zip(workers, slices)]
        device = next(iter(params.values())).device
        out = []
        for call, sl in zip(calls, slices):
            try:
                out.append(
                    torch.from_numpy(np.require(ray.get(call, timeout=self.wait_s), requirements="W")).to(device)
                )
            except (RayActorError, GetTimeoutError):
                out.append(self._evaluate_here(params, sl, steps, curve))
            if progress is not None:
                progress(sum(len(o) for o in out))
        return torch.cat(out)

    def _evaluate_here(self, params: Params, indices: Sequence[int], steps: int, curve: bool) -> torch.Tensor:
        learner = build_learner(self.config, next(iter(params.values())).device)
        return episode_curves(learner, params, build_distribution(self.config), indices, steps=steps, curve=curve)

    def _live_workers(self) -> list[int]:
        """Workers to use this step: all but those known to be down, whose probes have not answered yet."""
        for i in list(self._down):
            probe = self._down[i]
            if probe is None:
                self._down[i] = self.workers[i].info.remote()
                continue
            if ray.wait([probe], timeout=0)[0]:
                try:
                    ray.get(probe)
                    del self._down[i]
                except RayActorError:
                    self._down[i] = self.workers[i].info.remote()
        return [i for i in range(len(self.workers)) if i not in self._down]

    def _target(self, s: int, deadline: float) -> int:
        """A worker for slice s: round robin over those known to be up; when none is, the first whose
        probe answers (a restarting worker is never sent work it would fail)."""
        up = self._live_workers()
        return up[s % len(up)] if up else self._first_up(deadline)

    def _first_up(self, deadline: float) -> int:
        """Wait for the first down worker to answer its probe (Ray restarting it); raise at the deadline."""
        while True:
            self._live_workers()  # probes for workers that have none yet
            probes = {ref: i for i, ref in self._down.items() if ref is not None}
            ready, _ = ray.wait(list(probes), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise WorkersUnavailable(f"no adaptation worker came back within runtime.worker_wait_s={self.wait_s}s")
            i = probes[ready[0]]
            try:
                ray.get(ready[0])
                del self._down[i]
                return i
            except RayActorError:  # not restarted yet: ask again shortly
                self._down[i] = None
                time.sleep(0.05)

    def _send(self, worker: int, ref, step: int, sl: list[int], space):
        # A streaming generator: its first item is the result; the worker then samples its next slice.
        return self.workers[worker].compute.options(num_returns="streaming").remote(ref, step, sl, space)

    def _graph_ready(self, step: int) -> bool:
        """Whether this step can go through a compiled graph, building one when it is due."""
        if self._graph is not None or self._graph_retry is None or step < self._graph_retry[0]:
            return self._graph is not None
        # Build only when every worker answers at once; otherwise try again later, less and less often.
        _, wait = self._graph_retry
        infos = [w.info.remote() for w in self.workers]
        ready, _ = ray.wait(infos, num_returns=len(infos), timeout=1.0)
        if len(ready) < len(infos):
            self._graph_retry = (step + 2 * wait, 2 * wait)
            return False
        try:
            ray.get(ready)
            self._graph = StepGraph(self.workers)
            self._graph_retry = None
        except RayActorError:
            self._graph_retry = (step + 2 * wait, 2 * wait)
        except Exception as err:
            warnings.warn(f"no compiled graph ({type(err).__name__}: {err}); using actor calls", stacklevel=3)
            self._graph_retry = None
        return self._graph is not None

    def worker_info(self) -> list[dict]:
        """Node, device and pid of every worker, waiting (up to `worker_wait_s`) for any that is restarting."""
        deadline = time.monotonic() + self.wait_s
        info = [self._ask_until(w, deadline) for w in self.workers]
        self._down.clear()  # every worker answered
        return info

    def _ask_until(self, worker, deadline: float) -> dict:
        attempt = 0
        while True:
            try:
                return ray.get(worker.info.remote(), timeout=max(0.0, deadline - time.monotonic()))
            except RayActorError:  # restarting (or died again): Ray brings it back while time remains
                if time.monotonic() >= deadline:
                    raise WorkersUnavailable(
                        f"a worker stayed unavailable for runtime.worker_wait_s={self.wait_s}s"
                    ) from None
                time.sleep(min(2.0, 0.05 * 2**attempt))
                attempt += 1
            except GetTimeoutError:
                raise WorkersUnavailable(
                    f"a worker did not answer within runtime.worker_wait_s={self.wait_s}s"
                ) from None

    def _close_graph(self) -> None:
        if getattr(self, "_graph", None) is not None:
            self._graph.close()
        self._graph = None

    def close(self) -> None:
        self._close_graph()
        for w in getattr(self, "workers", []):
            ray.kill(w, no_restart=True)
        self.workers = []
        if self._own_group and self.group is not None:
            remove_placement_group(self.group)
            self.group = None
