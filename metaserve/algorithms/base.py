"""The one interface every meta-learner implements, and the batching the runtime relies on.

An algorithm maps (meta-parameters, task) to a *contribution* (a meta-gradient, or a Reptile-style
parameter delta). The learner only sums and averages contributions, then calls `outer_step`, so the
same code runs in one process or on many Ray workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import vmap

from metaserve.algorithms import outer
from metaserve.algorithms.params import Params, detach, scale
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


def merge(updates: list[TaskUpdate]) -> TaskUpdate:
    """Sum several updates (e.g. one per worker) into one."""
    contribution = {k: sum(u.contribution[k] for u in updates) for k in updates[0].contribution}
    metrics = {k: sum(u.metrics[k] for u in updates) for k in updates[0].metrics}
    return TaskUpdate(contribution, metrics, sum(u.count for u in updates))


@dataclass(frozen=True)
class OuterConfig:
    """How the mean contribution moves the meta-parameters."""

    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" | "sgd"


class Algorithm:
    """Base class: subclasses implement `contribute` (one task, pure, vmappable) and `adapt`."""

    #: True when the contribution is a meta-gradient (descend on it), False when it is a parameter
    #: delta to move along (Reptile-style).
    contribution_is_gradient: bool = True
    #: False for metric learners that use the model's embedding only.
    uses_head: bool = True
    #: How meta-training normalises the query set (models/norm.py): "transductive" with its own
    #: batch statistics, "support" with the support set's. Set from `model.batch_norm`.
    norm: str = "transductive"

    def __init__(self, model: nn.Module, kind: str, outer_cfg: OuterConfig, vectorize: bool = True):
        self.model = model
        self.kind = kind
        self.outer_cfg = outer_cfg
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
        return head.out_features if self.uses_head and isinstance(head, nn.Linear) else None

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

    def before_after(self, params: Params, adapted: Params, qx: Tensor, qy: Tensor,
                     sx: Tensor | None = None) -> Metrics:
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
        c, m = self.contribute(params, task.support_x, task.support_y, task.query_x, task.query_y)
        return TaskUpdate(detach(c), {k: float(v) for k, v in m.items()}, 1)

    def batch_update(self, params: Params, tasks: list[Task]) -> TaskUpdate:
        """The summed contribution of several tasks: vmapped when enabled, else a per-task loop."""
        if not self.vectorize or len(tasks) == 1:
            return merge([self.task_update(params, t) for t in tasks])
        b = stack_tasks(tasks)
        c, m = vmap(self.contribute, in_dims=(None, 0, 0, 0, 0), randomness="error")(
            params, b.support_x, b.support_y, b.query_x, b.query_y
        )
        return TaskUpdate(
            {k: v.detach().sum(0) for k, v in c.items()}, {k: float(v.sum()) for k, v in m.items()}, len(tasks)
        )

    def init_outer_state(self, params: Params) -> dict:
        return outer.adam_init(params) if self.outer_cfg.optimizer == "adam" else {}

    def outer_step(self, params: Params, mean_contribution: Params, state: dict) -> tuple[Params, dict]:
        """Move the meta-parameters by the batch-mean contribution."""
        direction = mean_contribution if self.contribution_is_gradient else scale(mean_contribution, -1.0)
        if self.outer_cfg.optimizer == "adam":
            return outer.adam_update(params, direction, state, self.outer_cfg.lr)
        return outer.sgd_update(params, direction, state, self.outer_cfg.lr)
