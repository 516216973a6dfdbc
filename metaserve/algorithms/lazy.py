"""Lazy teacher-student meta-learning for long inner horizons (Jamal, Wang & Gong, ICCV 2021).

The equations below are metaserve's contract for the method (the paper's text is not shipped):

Student (1):  phi_0 = theta,  phi_{j+1} = phi_j - alpha * grad L_S(phi_j),  j = 0..k-1, with no graph.
Leap    (2):  theta_T = theta + gamma * (phi - theta),  phi = phi_k (`leap_target: last`) or
              phi = (1/k) sum_{i=1..k} phi_i (`leap_target: mean`).
Query   (3):  v = grad L_Q(theta_T); the task's contribution is g = d L_Q(theta_T(theta)) / d theta.

`meta_gradient: exact` (the default). With J_j = I - alpha H_S(phi_j) (symmetric), d phi_{j+1}/d phi_j = J_j:
  last (4):   g = (1 - gamma) v + gamma * J_0 J_1 ... J_{k-1} v
  mean (5):   g = (1 - gamma) v + (gamma / k) * sum_{i=1..k} J_0 J_1 ... J_{i-1} v
  Both are one backward (adjoint) recursion with one Hessian-vector product per step:
              u_k = 0;  u_j = J_j (u_{j+1} + c_j v),  j = k-1 .. 0;  g = (1 - gamma) v + gamma * u_0,
  with c_j = [j = k-1] for `last` and c_j = 1/k for `mean` (u_j is the adjoint of phi_j minus its direct
  weight in phi). At gamma = 1, `last` is second-order MAML's meta-gradient for any k.
  The iterates phi_j are needed in reverse order. They are not stored with their activations: the forward
  pass keeps a parameter-sized checkpoint every s = ceil(sqrt(k)) steps, and the backward recursion replays
  one segment at a time from its checkpoint (full-batch SGD is deterministic). Memory is
  O(2 sqrt(k)) parameter copies, never activations; compute is k gradients forward, k - ceil(k/s) replayed
  gradients and k Hessian-vector products.

`meta_gradient: linearised` (the earlier one-step contract), first order in alpha:
  (6)         d theta_T / d theta ~= (1 - gamma) I + gamma (I - alpha * sum_{j<k} H_S(phi_j)),
              g = v - gamma * alpha * sum_{j<k} H_S(phi_j) v.
  It is (4) with the products expanded to first order, so it is only trustworthy while
  alpha * k * lambda_max(H_S) << 1; past alpha * k * lambda_max ~ 2 the factor changes sign and
  training diverges (BENCHMARKS.md: sinusoid k = 20, alpha = 0.01). Exact at k = 1.

lazy-reptile contribution: theta_T - theta = gamma * (phi - theta), applied as in Reptile.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import grad, vjp

from metaserve.algorithms.base import Metrics, TaskUpdate
from metaserve.algorithms.inner import InnerLoopLearner, InnerLoopSection
from metaserve.algorithms.params import Params, add, detach, interpolate, scale, sgd_step, subtract, total
from metaserve.registry import AlgorithmEntry, register

META_GRADIENTS = ("exact", "linearised")
#: alpha * k * lambda_max(H_S) past which the linearised factor 1 - alpha * k * lambda has flipped sign. Measured on
#: the sinusoid config at initialisation (median over 20 tasks): 1.3 at k = 5 (trained), 5.2 at k = 20 (diverged).
LINEARISED_SAFE = 2.0


class LazyConfig(InnerLoopSection):
    """lazy-maml / lazy-reptile (Jamal, Wang & Gong 2021): student k steps, teacher leap gamma."""

    name: Literal["lazy-maml", "lazy-reptile"] = "lazy-maml"
    leap: Annotated[float, Field(gt=0, le=1)] = 1.0  # gamma
    leap_target: Literal["last", "mean"] = "last"
    # lazy-maml: "exact" backpropagates through the student's trajectory with one HVP per step (eq. 4-5);
    # "linearised" is the first-order-in-alpha form (eq. 6), safe only while alpha * k * lambda_max(H_S) < 2.
    meta_gradient: Literal["exact", "linearised"] = "exact"


class LazyMAML(InnerLoopLearner):
    """Student explores k SGD steps without a graph; the teacher leaps toward it; meta-gradient via HVPs."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_lr: float,
        inner_steps: int,
        leap: float = 1.0,
        leap_target: str = "last",
        meta_gradient: str = "exact",
        eval_inner_steps: int | None = None,
        vectorize: bool = True,
    ):
        super().__init__(
            model,
            kind,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            vectorize=vectorize,
        )
        if leap_target not in ("last", "mean"):
            raise ValueError(f"leap_target={leap_target!r} is not one of ['last', 'mean']")
        if meta_gradient not in META_GRADIENTS:
            raise ValueError(f"meta_gradient={meta_gradient!r} is not one of {list(META_GRADIENTS)}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps={inner_steps} must be an integer >= 1")
        if not 0 < leap <= 1:
            raise ValueError(f"leap={leap} must lie in (0, 1]")
        self.leap = leap
        self.leap_target = leap_target
        self.meta_gradient = meta_gradient
        self.segment = math.ceil(math.sqrt(inner_steps))  # s: checkpoint spacing of the exact backward pass

    # --- the student and the teacher (1-2) -------------------------------------------------------
    def student_run(self, theta: Params, sx: Tensor, sy: Tensor) -> tuple[Params, dict[int, Params]]:
        """The leap target phi of (2), and (exact mode) the checkpoints {j: phi_j} for j = 0, s, 2s, ... < k."""
        phi, running, checkpoints = theta, None, {}
        for j in range(self.inner_steps):
            if j % self.segment == 0 and self.meta_gradient == "exact":
                checkpoints[j] = phi
            phi = sgd_step(phi, grad(self.loss)(phi, sx, sy), self.inner_lr)
            if self.leap_target == "mean":
                running = phi if running is None else total([running, phi])
        return (phi if running is None else scale(running, 1.0 / self.inner_steps)), checkpoints

    def student(self, theta: Params, sx: Tensor, sy: Tensor) -> Params:
        """The student's leap target: its last iterate, or the mean of phi_1..phi_k."""
        return self.student_run(theta, sx, sy)[0]

    def teacher(self, theta: Params, sx: Tensor, sy: Tensor) -> Params:
        """theta_T = theta + gamma * (phi - theta)."""
        return interpolate(theta, self.student(theta, sx, sy), self.leap)

    # --- meta-gradients (4-6) --------------------------------------------------------------------
    def hvp(self, phi: Params, u: Params, sx: Tensor, sy: Tensor) -> tuple[Params, Params]:
        """(grad L_S(phi), H_S(phi) u) from one reverse-over-reverse pass (H is symmetric)."""
        g, vjp_fn = vjp(lambda p: grad(self.loss)(p, sx, sy), phi)
        (hu,) = vjp_fn(u)
        return g, hu

    def summed_hvp(self, theta: Params, v: Params, sx: Tensor, sy: Tensor) -> Params:
        """sum_{j<k} H_S(phi_j) v of (6), replaying the student trajectory from theta."""
        phi, acc = theta, None
        for _ in range(self.inner_steps):
            g, hv = self.hvp(phi, v, sx, sy)
            acc = hv if acc is None else total([acc, hv])
            phi = sgd_step(phi, g, self.inner_lr)
        return acc

    def trajectory_adjoint(self, checkpoints: dict[int, Params], v: Params, sx: Tensor, sy: Tensor) -> Params:
        """u_0 of (4)/(5): u_j = (I - alpha H_S(phi_j)) (u_{j+1} + c_j v), backwards over checkpointed segments."""
        k, u = self.inner_steps, None
        for start in sorted(checkpoints, reverse=True):
            segment = [checkpoints[start]]  # replay phi_start .. phi_{end-1} from the checkpoint
            for _ in range(start + 1, min(start + self.segment, k)):
                segment.append(sgd_step(segment[-1], grad(self.loss)(segment[-1], sx, sy), self.inner_lr))
            for j in range(start + len(segment) - 1, start - 1, -1):
                if self.leap_target == "mean":
                    u = scale(v, 1.0 / k) if u is None else add(u, v, scale=1.0 / k)
                elif u is None:  # last: only phi_k carries v
                    u = v
                _, hu = self.hvp(segment[j - start], u, sx, sy)
                u = add(u, hu, scale=-self.inner_lr)
        return u

    def meta_grad(self, theta: Params, checkpoints: dict[int, Params], v: Params, sx: Tensor, sy: Tensor) -> Params:
        """The task's contribution g from v = grad L_Q(theta_T), by (4)/(5) or (6)."""
        if self.meta_gradient == "linearised":
            return add(v, self.summed_hvp(theta, v, sx, sy), scale=-self.leap * self.inner_lr)
        u = self.trajectory_adjoint(checkpoints, v, sx, sy)
        return add(scale(v, 1.0 - self.leap), u, scale=self.leap)

    def support_curvature(self, theta: Params, sx: Tensor, sy: Tensor, iterations: int = 20) -> float:
        """lambda_max of H_S(theta) (largest-magnitude eigenvalue) by power iteration on Hessian-vector products."""
        gen = torch.Generator(device=next(iter(theta.values())).device).manual_seed(0)
        u = {n: torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for n, t in theta.items()}
        lam = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((x * x).sum() for x in u.values()))
            u = scale(u, 1.0 / float(norm))
            _, hu = self.hvp(theta, u, sx, sy)
            lam = float(sum((a * b).sum() for a, b in zip(u.values(), hu.values())))
            u = hu
        return lam

    def warn_if_linearised_unsafe(self, theta: Params, sx: Tensor, sy: Tensor) -> float | None:
        """Warn (once, on the first task seen) when alpha * k * lambda_max(H_S) > LINEARISED_SAFE in linearised mode."""
        if self.meta_gradient != "linearised" or getattr(self, "_curvature_checked", False):
            return None
        self._curvature_checked = True
        risk = self.inner_lr * self.inner_steps * abs(self.support_curvature(detach(theta), sx, sy))
        if risk > LINEARISED_SAFE:
            warnings.warn(
                f"lazy-maml meta_gradient='linearised' with alpha * k * lambda_max(H_S) = {risk:.2f} > "
                f"{LINEARISED_SAFE} at the initial parameters: the linearised Jacobian I - alpha * sum_j H_S "
                "is not a contraction and training may diverge; use meta_gradient='exact' or a smaller "
                "inner_lr * inner_steps",
                stacklevel=2,
            )
        return risk

    # --- the interface (adapt: k SGD steps, from InnerLoopLearner) -------------------------------
    def block_updates(self, params: Params, tasks: list, sizes: list[int]) -> list[TaskUpdate]:
        self.warn_if_linearised_unsafe(params, tasks[0].support_x, tasks[0].support_y)
        return super().block_updates(params, tasks, sizes)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        theta = detach(params)
        phi, checkpoints = self.student_run(theta, sx, sy)
        theta_t = interpolate(theta, phi, self.leap)
        v, post = grad(lambda p: self.measure_query(p, sx, qx, qy), has_aux=True)(theta_t)
        return self.meta_grad(theta, checkpoints, v, sx, sy), {**post, **self.pre_metrics(theta, qx, qy, sx)}


class LazyReptile(LazyMAML):
    """Contribution = theta_T - theta; the outer step moves along it as in Reptile."""

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        theta = detach(params)
        theta_t = self.teacher(theta, sx, sy)
        return subtract(theta_t, theta), self.before_after(theta, theta_t, qx, qy, sx)


register(AlgorithmEntry("lazy-maml", LazyConfig, LazyMAML.from_section))
register(AlgorithmEntry("lazy-reptile", LazyConfig, LazyReptile.from_section, contribution="delta"))
