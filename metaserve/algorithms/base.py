"""The one interface every meta-learner implements, and the batching the runtime relies on.

An algorithm maps (meta-parameters, task) to a *contribution* (a meta-gradient, or a Reptile-style
parameter delta, as its registry entry says). The learner only sums and averages contributions and
hands the mean to the outer optimiser (algorithms/outer.py), so the same code runs in one process
or on many Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from metaserve.algorithms.params import Params, detach
from metaserve.models.functional import forward_fn
from metaserve.models.norm import Stats
from metaserve.tasks.base import Task, stack_tasks

Metrics = dict[str, Tensor]
STATE_PREFIX = "__"  # keys of an adapted state that are not model parameters (e.g. a metric learner's support set)


def strip_state(adapted: Params) -> Params:
    """The model parameters of an adapted state, without the extra entries some learners keep in it."""
    return {k: v for k, v in adapted.items() if not k.startswith(STATE_PREFIX)}


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

    #: How meta-training normalises the query set (models/norm.py): "transductive" with its own
    #: batch statistics, "support" with the support set's. Set from `model.batch_norm` by build_algorithm.
    norm: str = "transductive"

    def __init__(self, model: nn.Module, kind: str, vectorize: bool = True):
        self.model = model
        self.kind = kind
        self.vectorize = vectorize
        self.forward: Callable[..., Tensor] = forward_fn(model)  # (params, x[, stats])
        self._norm_stats = forward_fn(model, "norm_stats") if hasattr(model, "norm_stats") else None

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

    def predict(self, adapted: Params, x: Tensor, stats: Stats | None = None) -> Tensor:
        """Outputs of the adapted model: regression values or class logits.

        `stats` (from `norm_stats` on the support set) normalise x's batch norms, so each row's output
        depends on that row alone; None normalises x with its own batch statistics (transductive).
        """
        return self.forward(adapted, x, stats)

    def norm_stats(self, adapted: Params, support_x: Tensor) -> Stats | None:
        """Batch-norm statistics of the support set under the adapted parameters (None: no batch norm)."""
        if self._norm_stats is None:
            return None
        return self._norm_stats(strip_state(adapted), support_x)

    @property
    def head_classes(self) -> int | None:
        """Outputs of the classifier head (the most classes `adapt` can take), None without a fixed head."""
        head = getattr(self.model, "head", None)
        return head.out_features if isinstance(head, nn.Linear) else None

    def measure_query(self, params: Params, sx: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Metrics]:
        """Query loss and metrics, the queries normalised as `self.norm` says (support: with sx's statistics)."""
        stats = self.norm_stats(params, sx) if self.norm == "support" else None
        return self.score(self.predict(params, qx, stats), qy)

    # --- shared helpers --------------------------------------------------------------------------
    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.measure(params, x, y)[0]

    def measure(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        """Loss (MSE or cross-entropy) and its metrics from one forward pass."""
        return self.score(self.forward(params, x), y)

    def pre_metrics(self, params: Params, qx: Tensor, qy: Tensor, sx: Tensor | None = None) -> Metrics:
        """Query metrics before adaptation, suffixed `_pre` (with sx: normalised as `self.norm` says)."""
        p = detach(params)
        metrics = self.measure(p, qx, qy)[1] if sx is None else self.measure_query(p, sx, qx, qy)[1]
        return {f"{k}_pre": v for k, v in metrics.items()}

    def before_after(
        self, params: Params, adapted: Params, qx: Tensor, qy: Tensor, sx: Tensor | None = None
    ) -> Metrics:
        """Query metrics after adaptation, plus the `_pre` ones before it (with sx: as `self.norm` says)."""
        a = detach(adapted)
        post = self.measure(a, qx, qy)[1] if sx is None else self.measure_query(a, sx, qx, qy)[1]
        return {**post, **self.pre_metrics(params, qx, qy, sx)}

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
        """The summed contribution of each block of consecutive tasks (`sizes` tasks each), one batched
        call per block: the same shapes, so the same bits, whichever process computes a block."""
        out, start = [], 0
        for n in sizes:
            block = tasks[start : start + n]
            c, m = map_tasks(lambda sx, sy, qx, qy: self.contribute(params, sx, sy, qx, qy), block, self.vectorize)
            out.append(
                TaskUpdate({k: v.detach().sum(0) for k, v in c.items()}, {k: float(v.sum()) for k, v in m.items()}, n)
            )
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
