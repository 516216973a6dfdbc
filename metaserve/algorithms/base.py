"""The one interface every meta-learner implements, and the batching the runtime relies on.

An algorithm maps (meta-parameters, task) to a *contribution* (a meta-gradient, or a Reptile-style
parameter delta, as its registry entry says). The learner only sums and averages contributions and
hands the mean to the outer optimiser (algorithms/outer.py), so the same code runs in one process
or on many Ray workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import vmap

from metaserve.algorithms.params import Params, detach
from metaserve.models.functional import forward_fn
from metaserve.tasks.base import Task, stack_tasks

Metrics = dict[str, Tensor]


@dataclass
class TaskUpdate:
    """The summed contribution of `count` tasks and their summed metrics."""

    contribution: Params
    metrics: dict[str, float] = field(default_factory=dict)
    count: int = 1

    def mean_metrics(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.metrics.items()}

    def mean_contribution(self) -> Params:
        """The contribution averaged over the tasks: what the outer step moves the meta-parameters by."""
        names = list(self.contribution)
        return dict(zip(names, torch._foreach_mul([self.contribution[k] for k in names], 1.0 / self.count)))


class Algorithm:
    """Base class: subclasses implement `contribute` (one task, pure, vmappable) and `adapt`."""

    def __init__(self, model: nn.Module, kind: str, vectorize: bool = True):
        self.model = model
        self.kind = kind
        self.vectorize = vectorize
        self.forward: Callable[[Params, Tensor], Tensor] = forward_fn(model)

    # --- per-task maths (subclasses) -------------------------------------------------------------
    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        """Contribution and metrics (as 0-d tensors) of one task. Pure, so it can be vmapped."""
        raise NotImplementedError

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        """Task-specific parameters after adapting to a support set (no meta-gradient graph)."""
        raise NotImplementedError

    def init_meta_params(self, params: Params) -> Params:
        """The meta-parameters at step 0 given the model's initial parameters: by default the model's
        own. An algorithm that meta-learns more than an initialisation (Meta-SGD's per-parameter inner
        learning rates) returns them added here; `Learner.initial_params` calls it under the run's seed,
        so they are checkpointed, shipped to workers and optimised like any other meta-parameter."""
        return params

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        """Outputs of the adapted model: regression values or class logits."""
        return self.forward(adapted, x)

    # --- shared helpers --------------------------------------------------------------------------
    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.measure(params, x, y)[0]

    def measure(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        """Loss (MSE or cross-entropy) and its metrics from one forward pass."""
        return self.score(self.forward(params, x), y)

    def pre_metrics(self, params: Params, qx: Tensor, qy: Tensor) -> Metrics:
        """Query metrics before adaptation, suffixed `_pre`."""
        return {f"{k}_pre": v for k, v in self.measure(detach(params), qx, qy)[1].items()}

    def before_after(self, params: Params, adapted: Params, qx: Tensor, qy: Tensor) -> Metrics:
        """Query metrics after adaptation, plus the `_pre` ones before it."""
        return {**self.measure(detach(adapted), qx, qy)[1], **self.pre_metrics(params, qx, qy)}

    def score(self, out: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        if self.kind == "regression":
            loss = torch.nn.functional.mse_loss(out, y)
            return loss, {"loss": loss.detach()}
        loss = torch.nn.functional.cross_entropy(out, y)
        acc = (out.argmax(-1) == y).to(out.dtype).mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}

    # --- the interface the runtime uses ----------------------------------------------------------
    def task_update(self, params: Params, task: Task) -> TaskUpdate:
        """The contribution of one task."""
        return self.batch_update(params, [task])

    def batch_update(self, params: Params, tasks: list[Task]) -> TaskUpdate:
        """The summed contribution of several tasks: vmapped when enabled, else a per-task loop."""
        return self.block_updates(params, tasks, [len(tasks)])[0]

    def block_updates(self, params: Params, tasks: list[Task], sizes: list[int]) -> list[TaskUpdate]:
        """The summed contribution of each block of consecutive tasks (`sizes` tasks each), from one
        batched call over all of them: a task's contribution never depends on the others in the call."""
        c, m = map_tasks(lambda sx, sy, qx, qy: self.contribute(params, sx, sy, qx, qy), tasks, self.vectorize)
        out, start = [], 0
        for n in sizes:
            part = slice(start, start + n)
            out.append(TaskUpdate({k: v[part].detach().sum(0) for k, v in c.items()},
                                  {k: float(v[part].sum()) for k, v in m.items()}, n))
            start += n
        return out


def section_keywords(cfg: Any) -> dict[str, Any]:
    """An algorithm config section's own keys (all but `name` and `outer`): its constructor's keywords."""
    return {k: v for k, v in cfg if k not in ("name", "outer")}


def map_tasks(fn: Callable[..., Any], tasks: list[Task] | Task, vectorize: bool) -> Any:
    """`fn(support_x, support_y, query_x, query_y)` of every task, stacked on a new dim 0.

    One `vmap`ped call when `vectorize` (and more than one task), else a loop whose outputs are
    stacked the same way, so callers never care which ran. `tasks` is a list or an already stacked Task.
    """
    b = tasks if isinstance(tasks, Task) else stack_tasks(tasks)
    fields = (b.support_x, b.support_y, b.query_x, b.query_y)
    if vectorize and b.support_x.shape[0] > 1:
        return vmap(fn, randomness="error")(*fields)
    return _stack([fn(*(f[i] for f in fields)) for i in range(b.support_x.shape[0])])


def _stack(outs: list[Any]) -> Any:
    """Stack a list of equally shaped outputs (tensors, dicts or tuples of them) on a new dim 0."""
    first = outs[0]
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack([o[j] for o in outs]) for j in range(len(first)))
    return torch.stack(outs)
