"""Meta-test evaluation: mean metric +- 95% CI over held-out episodes, and the adaptation curve.

The field's convention (Finn et al. 2017; Snell et al. 2017) is at least 600 test episodes and a 95%
confidence interval 1.96 * std / sqrt(n). The adaptation curve is the query loss (and accuracy)
after 0..k inner steps, averaged over the episodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from metaserve.algorithms.base import Algorithm, map_tasks
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.tasks.base import Stream, TaskDistribution


@dataclass
class EvalResult:
    """Summary of a meta-test: `metric` is 'acc' (classification) or 'mse' (regression)."""

    metric: str
    mean: float
    ci95: float
    episodes: int
    curve: list[dict[str, float]] = field(default_factory=list)  # one row per inner step 0..k
    curve_ci95: list[dict[str, float]] = field(default_factory=list)  # the 95% CI half-width of each curve value

    def __str__(self) -> str:
        value = f"{100 * self.mean:.2f}% +- {100 * self.ci95:.2f}%" if self.metric == "acc" else f"{self.mean:.4f} +- {self.ci95:.4f}"
        return f"meta-test {self.metric}: {value} over {self.episodes} episodes"


def ci95(values: Tensor) -> float:
    """Half-width of the normal 95% confidence interval of the mean."""
    n = values.numel()
    return 1.96 * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")


def episode_curve(algorithm: Algorithm, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, steps: int,
                  curve: bool = True) -> Tensor:
    """[steps + 1, 2]: query (loss, accuracy or 0) after 0..steps inner steps of one episode; with
    `curve=False` only after the last one, [1, 2] (one query pass instead of steps + 1)."""
    rows = []
    adapted = algorithm.adapt(params, sx, sy, steps=0 if curve else steps)
    for j in range(steps + 1 if curve else 1):
        if j > 0:
            adapted = algorithm.adapt(adapted, sx, sy, steps=1)
        loss, metrics = algorithm.score(algorithm.predict(adapted, qx), qy)
        rows.append(torch.stack([loss.detach(), metrics.get("acc", torch.zeros_like(loss)).detach()]))
    return torch.stack(rows)


def protocol_steps(learner: Learner, steps: int | None) -> int:
    """Inner steps at meta-test, as the registry entry's protocol says: an inner-loop learner takes
    `steps` (default: its `eval_inner_steps`); a closed-form (metric) or family learner none (a family
    learner's goal tasks after meta-finetuning; family_eval.py has the whole family protocol)."""
    if learner.config.entry.evaluation != "inner-loop":
        return 0
    return learner.algorithm.eval_inner_steps if steps is None else steps


def episode_curves(learner: Learner, params: Params, distribution: TaskDistribution, indices: Sequence[int], *,
                   steps: int, stream: Stream = "test", space: object | None = None, seed: int | None = None,
                   curve: bool = True, chunk: int = 100, progress: Callable[[int], None] | None = None) -> Tensor:
    """[len(indices), rows, 2]: `episode_curve` of held-out episodes `indices`, `chunk` at a time
    (`progress(done)` after each chunk). Episodes are pure functions of (seed, index), so any process
    (a Ray worker) computes the same rows."""
    algorithm, seed, idx = learner.algorithm, learner.config.seed if seed is None else seed, list(indices)
    out = []
    for start in range(0, len(idx), chunk):
        tasks = [distribution.sample(seed, 0, i, space, stream).to(learner.device, learner.dtype) for i in idx[start:start + chunk]]
        out.append(map_tasks(lambda *t: episode_curve(algorithm, params, *t, steps, curve), tasks, algorithm.vectorize))
        if progress is not None:
            progress(min(start + chunk, len(idx)))
    return torch.cat(out)


def summarize(curves: Tensor, kind: str, steps: int) -> EvalResult:
    """The final metric +- 95% CI and the mean curve of per-episode curves [episodes, rows, 2]."""
    classification = kind == "classification"
    final = curves[:, -1, 1] if classification else curves[:, -1, 0]
    first = steps + 1 - curves.shape[1]  # 0 with the whole curve, `steps` with the final row only
    rows = [{"inner_step": first + j, "loss": float(curves[:, j, 0].mean()),
             **({"acc": float(curves[:, j, 1].mean())} if classification else {})} for j in range(curves.shape[1])]
    bands = [{"inner_step": first + j, "loss": ci95(curves[:, j, 0]),
              **({"acc": ci95(curves[:, j, 1])} if classification else {})} for j in range(curves.shape[1])]
    return EvalResult("acc" if classification else "mse", float(final.mean()), ci95(final), curves.shape[0], rows, bands)


def evaluate(learner: Learner, params: Params, distribution: TaskDistribution, *, episodes: int = 600,
             steps: int | None = None, stream: Stream = "test", space: object | None = None, seed: int | None = None,
             curve: bool = True, chunk: int = 100, progress: Callable[[int], None] | None = None) -> EvalResult:
    """Adapt to `episodes` held-out tasks and report the final metric with its 95% CI (and the mean
    adaptation curve unless `curve=False`). The registry entry's protocol sets the steps (`protocol_steps`)."""
    steps = protocol_steps(learner, steps)
    curves = episode_curves(learner, params, distribution, range(episodes), steps=steps, stream=stream, space=space,
                            seed=seed, curve=curve, chunk=chunk, progress=progress)
    return summarize(curves, learner.algorithm.kind, steps)
