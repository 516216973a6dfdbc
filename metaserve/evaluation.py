"""Meta-test evaluation: mean metric +- 95% CI over held-out episodes, and the adaptation curve.

The field's convention (Finn et al. 2017; Snell et al. 2017) is at least 600 test episodes and a 95%
confidence interval 1.96 * std / sqrt(n). The adaptation curve is the query loss (and accuracy)
after 0..k inner steps, averaged over the episodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from torch.func import vmap

from metaserve.algorithms.base import Algorithm
from metaserve.models.functional import Params
from metaserve.tasks.base import Stream, Task, stack_tasks


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


def episode_curve(algorithm: Algorithm, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, steps: int) -> Tensor:
    """[steps + 1, 2]: query (loss, accuracy or 0) after 0..steps inner steps of one episode."""
    rows = []
    adapted = algorithm.adapt(params, sx, sy, steps=0)
    for j in range(steps + 1):
        if j > 0:
            adapted = algorithm.adapt(adapted, sx, sy, steps=1)
        out = algorithm.predict(adapted, qx)
        loss, metrics = algorithm.score(out, qy)
        rows.append(torch.stack([loss.detach(), metrics.get("acc", torch.zeros_like(loss)).detach()]))
    return torch.stack(rows)


def evaluate(algorithm: Algorithm, params: Params, distribution, *, seed: int, episodes: int = 600, steps: int | None = None,
             stream: Stream = "test", space=None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, chunk: int = 100,
             progress: Callable[[int], None] | None = None) -> EvalResult:
    """Adapt to `episodes` held-out tasks and report the final metric with its 95% CI.

    `progress(done)` is called after each chunk of episodes (a progress bar's advance)."""
    steps = getattr(algorithm, "eval_inner_steps", 0) if steps is None else steps
    if not hasattr(algorithm, "inner_lr"):
        steps = 0  # metric learners adapt in closed form: one point on the curve
    curves = []
    for start in range(0, episodes, chunk):
        tasks = [distribution.sample(seed, 0, i, space, stream).to(device, dtype) for i in range(start, min(start + chunk, episodes))]
        curves.append(_curves(algorithm, params, tasks, steps))
        if progress is not None:
            progress(min(start + chunk, episodes))
    curve = torch.cat(curves)  # [episodes, steps + 1, 2]
    classification = algorithm.kind == "classification"
    final = curve[:, -1, 1] if classification else curve[:, -1, 0]
    rows = [{"inner_step": j, "loss": float(curve[:, j, 0].mean()), **({"acc": float(curve[:, j, 1].mean())} if classification else {})}
            for j in range(steps + 1)]
    bands = [{"inner_step": j, "loss": ci95(curve[:, j, 0]),
              **({"acc": ci95(curve[:, j, 1])} if classification else {})} for j in range(steps + 1)]
    return EvalResult("acc" if classification else "mse", float(final.mean()), ci95(final), episodes, rows, bands)


def _curves(algorithm: Algorithm, params: Params, tasks: list[Task], steps: int) -> Tensor:
    run = lambda sx, sy, qx, qy: episode_curve(algorithm, params, sx, sy, qx, qy, steps)  # noqa: E731
    if algorithm.vectorize:
        b = stack_tasks(tasks)
        return vmap(run)(b.support_x, b.support_y, b.query_x, b.query_y)
    return torch.stack([run(t.support_x, t.support_y, t.query_x, t.query_y) for t in tasks])
