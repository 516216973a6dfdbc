"""The inner loop shared by the gradient-based learners: k plain SGD steps on the support loss."""
from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.func import grad

from metaserve.algorithms.params import Params, detach, sgd_step

LossFn = Callable[[Params, Tensor, Tensor], Tensor]


def sgd_adapt(loss: LossFn, params: Params, x: Tensor, y: Tensor, lr: float, steps: int, first_order: bool = False) -> Params:
    """phi_{j+1} = phi_j - lr * grad L_S(phi_j), phi_0 = params (Finn et al. 2017, eq. 1).

    Differentiable through every step when called under an outer `torch.func.grad` (second order);
    `first_order=True` treats each inner gradient as a constant (the FOMAML approximation).
    """
    phi = params
    for _ in range(steps):
        g = grad(loss)(phi, x, y)
        phi = sgd_step(phi, detach(g) if first_order else g, lr)
    return phi
