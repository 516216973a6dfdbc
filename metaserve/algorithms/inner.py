"""The inner loop shared by the gradient-based learners: k plain SGD steps on the support loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, section_keywords
from metaserve.algorithms.params import Params, detach, sgd_step
from metaserve.config import AlgorithmSection, PositiveFloat, PositiveInt, task_kind

LossFn = Callable[[Params, Tensor, Tensor], Tensor]


def sgd_adapt(
    loss: LossFn, params: Params, x: Tensor, y: Tensor, lr: float, steps: int, first_order: bool = False
) -> Params:
    """phi_{j+1} = phi_j - lr * grad L_S(phi_j), phi_0 = params (Finn et al. 2017, eq. 1).

    Differentiable through every step when called under an outer `torch.func.grad` (second order);
    `first_order=True` treats each inner gradient as a constant (the FOMAML approximation).
    """
    phi = params
    for _ in range(steps):
        g = grad(loss)(phi, x, y)
        phi = sgd_step(phi, detach(g) if first_order else g, lr)
    return phi


class InnerLoopSection(AlgorithmSection):
    """The inner loop of the gradient-based learners: k SGD steps of size alpha."""

    inner_lr: PositiveFloat = 0.01  # alpha
    inner_steps: PositiveInt = 1  # k during meta-training
    eval_inner_steps: PositiveInt | None = None  # k at meta-test (default: inner_steps)


class InnerLoopLearner(Algorithm):
    """What the gradient-based learners share: alpha, k, and adaptation by k SGD steps (no meta-gradient graph)."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_lr: float,
        inner_steps: int,
        eval_inner_steps: int | None = None,
        vectorize: bool = True,
    ):
        super().__init__(model, kind, vectorize)
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps

    @classmethod
    def from_section(cls, cfg: InnerLoopSection, model: nn.Module, task: Any, vectorize: bool) -> InnerLoopLearner:
        """Built from its config section (the registry's constructor): every key but `name` and `outer`
        is a keyword of the constructor."""
        return cls(model, task_kind(task), vectorize=vectorize, **section_keywords(cfg))

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return sgd_adapt(self.loss, detach(params), x, y, self.inner_lr, steps, first_order=True)
