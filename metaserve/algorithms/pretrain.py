"""Pretraining on all tasks, then finetuning: the transfer-learning baseline of the MALTML paper's experiments.

The contribution is the plain gradient of the loss on all of a task's examples (support and query
together), so the outer step is minibatch SGD/Adam over tasks: theta <- theta - eta mean_i grad L_i(theta).
At meta-test the model is finetuned with `eval_inner_steps` SGD steps of size `inner_lr` on the
support set, like the gradient-based learners. With `task.oracle` (inputs x, amplitude, phase) it
trains the oracle baseline.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Metrics
from metaserve.algorithms.inner import InnerLoopLearner
from metaserve.algorithms.params import Params
from metaserve.config import AlgorithmSection, PositiveFloat, PositiveInt, task_kind
from metaserve.registry import AlgorithmEntry, register


class PretrainConfig(AlgorithmSection):
    """Joint training on all tasks, then SGD finetuning at meta-test (MALTML's pretraining baseline)."""

    name: Literal["pretrain"] = "pretrain"
    inner_lr: PositiveFloat = 0.01  # finetuning step at meta-test
    eval_inner_steps: PositiveInt = 10  # finetuning steps at meta-test


class Pretrain(InnerLoopLearner):
    """Contribution = grad L(theta) on the task's support and query examples; adapt = SGD finetuning."""

    @classmethod
    def from_section(cls, cfg: PretrainConfig, model: nn.Module, task: Any, vectorize: bool) -> Pretrain:
        # Training takes no inner steps; the meta-test finetunes `eval_inner_steps` of them.
        return cls(model, task_kind(task), inner_lr=cfg.inner_lr, inner_steps=cfg.eval_inner_steps, vectorize=vectorize)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        return grad(self.measure, has_aux=True)(params, torch.cat([sx, qx]), torch.cat([sy, qy]))


register(AlgorithmEntry("pretrain", PretrainConfig, Pretrain.from_section, reports_pre=False))
