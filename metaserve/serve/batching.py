"""Run a batch of validated requests: group them, adapt and predict each group in one vmapped call.

Requests that share a model, a step count and shapes form a group; a group of more than one runs as
`vmap(lambda sx, sy, qx: predict(adapt(theta, sx, sy, k), qx))` over the requests, so each request
is adapted from the same meta-parameters theta with its own support set, and every per-request
statistic (batch norm included) is computed over that request's examples only. An answer therefore
equals `metaserve.load(run).adapt(sx, sy, k).predict(qx)` for the request alone (to floating-point
rounding of the batched kernels; a group of one runs exactly that code). Groups whose algorithm
cannot be vmapped fall back to a loop, remembered per model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from metaserve.api import MetaModel
from metaserve.evaluation import adapt_to, predict_with
from metaserve.serve.schema import Job


@dataclass
class Served:
    """A loaded run and whether its adapt/predict vmaps over requests (found on first use)."""

    model: MetaModel
    vmappable: bool = True
    calls: dict[str, int] = field(default_factory=lambda: {"vmapped": 0, "looped": 0})


@dataclass
class Result:
    """One request's outputs (regression values or logits) and how it was computed."""

    output: Tensor
    steps: int | None
    group_size: int
    compute_ms: float


def group_key(job: Job) -> tuple[Any, ...]:
    """Requests with equal keys can be stacked into one vmapped call."""
    return (
        job.model,
        job.steps,
        tuple(job.support_x.shape),
        tuple(job.support_y.shape),
        tuple(job.query_x.shape),
        job.support_y.dtype,
    )


def run_batch(models: dict[str, Served], jobs: list[Job], vectorize: bool = True) -> list[Result]:
    """The result of every job, in order: one call per group of compatible jobs."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(group_key(job), []).append(i)
    results: list[Result | None] = [None] * len(jobs)
    for idx in groups.values():
        served = models[jobs[idx[0]].model]
        t0 = time.perf_counter()
        outs = run_group(served, [jobs[i] for i in idx], vectorize)
        ms = (time.perf_counter() - t0) * 1e3
        for i, out in zip(idx, outs):
            results[i] = Result(out, jobs[i].steps, len(idx), ms)
    return results  # type: ignore[return-value]


def run_group(served: Served, jobs: list[Job], vectorize: bool) -> list[Tensor]:
    """Outputs of jobs sharing model, steps and shapes: vmapped over jobs when possible, else looped."""
    if vectorize and len(jobs) > 1 and served.vmappable:
        try:
            out = vmapped(served.model, jobs)
            served.calls["vmapped"] += 1
            return list(out.unbind(0))
        except RuntimeError:  # an op without a batching rule: loop from now on for this model
            served.vmappable = False
    served.calls["looped"] += 1
    return [single(served.model, j) for j in jobs]


def single(model: MetaModel, job: Job) -> Tensor:
    """Exactly the in-process API for one request."""
    return model.adapt(job.support_x, job.support_y, job.steps).predict(job.query_x).cpu()


def vmapped(model: MetaModel, jobs: list[Job]) -> Tensor:
    """[requests, query, out]: adapt and predict every request in one call, vmapped over requests."""
    learner = model.learner
    dev, dt = learner.device, learner.dtype
    algo, params, steps = learner.algorithm, model.params, jobs[0].steps
    sx = torch.stack([j.support_x for j in jobs]).to(dev, dt)
    sy = torch.stack([j.support_y for j in jobs]).to(dev)
    sy = sy.to(dt) if sy.is_floating_point() else sy
    qx = torch.stack([j.query_x for j in jobs]).to(dev, dt)

    ways = None
    if (
        algo.kind == "classification" and sy.dim() == 2
    ):  # one task's labels per request: 0..N-1, as MetaModel.adapt checks
        counts = {int(y.max()) + 1 for y in sy}
        if len(counts) > 1:
            return torch.stack([single(model, j) for j in jobs])  # different class counts: not one vmapped call
        ways = counts.pop()
    norm = model.config.eval.batch_norm  # MetaModel.adapt's default, so answers equal the in-process API's

    def one(x: Tensor, y: Tensor, q: Tensor) -> Tensor:
        return predict_with(algo, adapt_to(algo, params, x, y, steps, ways), x, q, norm, ways)

    return vmap(one, randomness="error")(sx, sy, qx).detach().cpu()
