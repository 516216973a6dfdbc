"""Lazy teacher-student meta-learning for long inner horizons (Jamal, Wang & Gong, ICCV 2021).

The equations below are metaserve's contract for the method (the paper's text is not shipped):

Student:  phi_0 = theta,  phi_{j+1} = phi_j - alpha * grad L_S(phi_j),  j = 0..k-1, with no graph.
Leap:     theta_T = theta + gamma * (phi - theta),  phi = phi_k (`leap_target: last`) or the mean of
          phi_1..phi_k (`leap_target: mean`).
lazy-maml meta-gradient, through the teacher's light graph of the leap:
          d theta_T / d theta ~= (1 - gamma) I + gamma (I - alpha * sum_{j<k} H_S(phi_j))
          g = v - gamma * alpha * sum_{j<k} H_S(phi_j) v,   v = grad L_Q(theta_T).
          The Hessian-vector products are taken at the student's iterates, which are replayed
          (full-batch SGD is deterministic) rather than stored, so memory does not grow with k.
          With k = 1 and gamma = 1 this is MAML's one-step meta-gradient exactly.
lazy-reptile contribution: theta_T - theta = gamma * (phi - theta), applied as in Reptile.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.func import grad, vjp

from metaserve.algorithms.base import Algorithm, Metrics, OuterConfig
from metaserve.algorithms.params import Params, add, detach, interpolate, scale, sgd_step, subtract, total


class LazyMAML(Algorithm):
    """Student explores k SGD steps without a graph; the teacher leaps toward it; meta-gradient via HVPs."""

    def __init__(self, model: nn.Module, kind: str, outer_cfg: OuterConfig, *, inner_lr: float, inner_steps: int, leap: float = 1.0, leap_target: str = "last", eval_inner_steps: int | None = None, vectorize: bool = True):
        super().__init__(model, kind, outer_cfg, vectorize)
        if leap_target not in ("last", "mean"):
            raise ValueError(f"leap_target={leap_target!r} is not one of ['last', 'mean']")
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.leap = leap
        self.leap_target = leap_target
        self.eval_inner_steps = eval_inner_steps or inner_steps

    def student(self, theta: Params, sx: Tensor, sy: Tensor) -> Params:
        """The student's leap target: its last iterate, or the mean of phi_1..phi_k."""
        phi, running = theta, None
        for _ in range(self.inner_steps):
            phi = sgd_step(phi, grad(self.loss)(phi, sx, sy), self.inner_lr)
            if self.leap_target == "mean":
                running = phi if running is None else total([running, phi])
        return phi if running is None else scale(running, 1.0 / self.inner_steps)

    def teacher(self, theta: Params, sx: Tensor, sy: Tensor) -> Params:
        """theta_T = theta + gamma * (phi - theta)."""
        return interpolate(theta, self.student(theta, sx, sy), self.leap)

    def summed_hvp(self, theta: Params, v: Params, sx: Tensor, sy: Tensor) -> Params:
        """sum_{j<k} H_S(phi_j) v, replaying the student trajectory from theta."""
        phi, acc = theta, None
        for _ in range(self.inner_steps):
            # reverse-over-reverse: one pass gives grad L_S(phi_j), and H_S(phi_j) v since H is symmetric.
            g, vjp_fn = vjp(lambda p: grad(self.loss)(p, sx, sy), phi)
            (hv,) = vjp_fn(v)
            acc = hv if acc is None else total([acc, hv])
            phi = sgd_step(phi, g, self.inner_lr)
        return acc

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        phi = detach(params)
        for _ in range(steps):
            phi = sgd_step(phi, grad(self.loss)(phi, x, y), self.inner_lr)
        return phi

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        theta = detach(params)
        theta_t = self.teacher(theta, sx, sy)
        v, post = grad(lambda p: self.measure_query(p, sx, qx, qy), has_aux=True)(theta_t)
        g = add(v, self.summed_hvp(theta, v, sx, sy), scale=-self.leap * self.inner_lr)
        return g, {**post, **self.pre_metrics(theta, qx, qy, sx)}


class LazyReptile(LazyMAML):
    """Contribution = theta_T - theta; the outer step moves along it as in Reptile."""

    contribution_is_gradient = False

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        theta = detach(params)
        theta_t = self.teacher(theta, sx, sy)
        return subtract(theta_t, theta), self.before_after(theta, theta_t, qx, qy, sx)
