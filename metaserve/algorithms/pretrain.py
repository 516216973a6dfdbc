"""Pretraining on all tasks, then finetuning: the transfer-learning baseline of the MALTML paper's experiments.

The contribution is the plain gradient of the loss on all of a task's examples (support and query
together), so the outer step is minibatch SGD/Adam over tasks: theta <- theta - eta mean_i grad L_i(theta).
At meta-test the model is finetuned with `eval_inner_steps` SGD steps of size `inner_lr` on the
support set, like the gradient-based learners. With `task.oracle` (inputs x, amplitude, phase) it
trains the oracle baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, Metrics, OuterConfig
from metaserve.algorithms.inner import sgd_adapt
from metaserve.algorithms.params import Params, detach


class Pretrain(Algorithm):
    """Contribution = grad L(theta) on the task's support and query examples; adapt = SGD finetuning."""

    def __init__(self, model: nn.Module, kind: str, outer_cfg: OuterConfig, *, inner_lr: float, eval_inner_steps: int,
                 vectorize: bool = True):
        super().__init__(model, kind, outer_cfg, vectorize)
        self.inner_lr = inner_lr
        self.eval_inner_steps = eval_inner_steps

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        return grad(self.measure, has_aux=True)(params, torch.cat([sx, qx]), torch.cat([sy, qy]))

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return sgd_adapt(self.loss, detach(params), x, y, self.inner_lr, steps, first_order=True)
