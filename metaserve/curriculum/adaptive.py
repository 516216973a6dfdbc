"""The adaptive teacher (Shevchuk, "Teaching Your MAML", section IV.B, Algorithm 1).

Every teacher update (every `curriculum.every` meta-steps: the teacher update rate, 4 in Table I):

1. record the meta-validation loss L_t the student reached on the omega_t it trained on;
2. estimate the difficulty gradient g = dL/d omega by finite differences over the last `window`
   teacher steps (`difficulty_gradient`);
3. move the teacher's centre: each parameter by a fixed amount (the teacher gradient step, 2 in
   Table I) in the direction sign(g_i) when the student over-performs (L_t < target: harder tasks),
   in -sign(g_i) when it under-performs (L_t > target: easier tasks), only where |g_i| exceeds the
   threshold; always clipped to the bounds (`sign_step`);
4. perturb the centre with uniform noise, reflected into the bounds, to get omega_{t+1} (`perturb`):
   the perturbations are what make the finite differences informative.

Everything here is a pure function of its arguments; the uniform draws come in as `u` in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from metaserve.curriculum.omega import round_half_up

Vector = tuple[float, ...]


@dataclass(frozen=True)
class AdaptiveHyper:
    """The adaptive teacher's hyperparameters, one entry per moved parameter (in `names` order)."""

    names: tuple[str, ...]
    low: Vector
    high: Vector
    step: Vector  # teacher gradient step: the fixed move per update
    noise: Vector  # half-width of the uniform perturbation
    integer: tuple[bool, ...]  # rounded before use (ways, shots, query)
    window: int = 3  # teacher steps the finite-difference estimate spans
    grad_threshold: float = 0.0
    target_loss: float = 1.0


@dataclass(frozen=True)
class AdaptiveState:
    """The teacher's centre, the omega the student trains on, and the recent (omega, loss) history."""

    mean: Vector
    omega: Vector
    history_omega: tuple[Vector, ...] = ()
    history_loss: Vector = ()
    updates: int = 0
    last_grad: Vector = ()

    def to_dict(self) -> dict:
        """Plain lists and floats (checkpoints load with weights_only=True)."""
        return {
            "mean": list(self.mean),
            "omega": list(self.omega),
            "history_omega": [list(o) for o in self.history_omega],
            "history_loss": list(self.history_loss),
            "updates": self.updates,
            "last_grad": list(self.last_grad),
        }

    @classmethod
    def from_dict(cls, d: dict) -> AdaptiveState:
        vec = lambda xs: tuple(float(x) for x in xs)  # noqa: E731
        return cls(
            vec(d["mean"]),
            vec(d["omega"]),
            tuple(vec(o) for o in d["history_omega"]),
            vec(d["history_loss"]),
            int(d["updates"]),
            vec(d.get("last_grad", ())),
        )


def difficulty_gradient(omegas: Sequence[Sequence[float]], losses: Sequence[float]) -> list[float]:
    """Finite-difference estimate of d(meta-val loss)/d(omega) from consecutive teacher steps.

    With d omega_t = omega_t - omega_{t-1} and dL_t = L_t - L_{t-1}, returns the minimum-norm least
    squares g of dL_t ~ d omega_t . g: for one parameter g = sum(d omega dL) / sum(d omega^2); a
    parameter that never changed gets 0. Fewer than two observations: all zeros.
    """
    dim = len(omegas[0]) if len(omegas) else 0
    if len(omegas) < 2:
        return [0.0] * dim
    d_omega = np.diff(np.asarray(omegas, dtype=np.float64), axis=0)  # [steps - 1, dim]
    d_loss = np.diff(np.asarray(losses, dtype=np.float64))  # [steps - 1]
    if not np.any(d_omega):
        return [0.0] * dim
    g, *_ = np.linalg.lstsq(d_omega, d_loss, rcond=None)
    return [float(x) for x in g]


def sign_step(mean: Sequence[float], grad: Sequence[float], loss: float, hp: AdaptiveHyper) -> Vector:
    """Algorithm 1's move: mean_i + sign(target - L) * step_i * sign(g_i) where |g_i| > threshold, clipped."""
    direction = float(np.sign(hp.target_loss - loss))  # +1: over-performing, raise difficulty; -1: lower it
    out = []
    for i, (m, g) in enumerate(zip(mean, grad)):
        moved = m + direction * hp.step[i] * math.copysign(1.0, g) if abs(g) > hp.grad_threshold and g != 0 else m
        out.append(min(max(moved, hp.low[i]), hp.high[i]))
    return tuple(out)


def perturb(mean: Sequence[float], u: Sequence[float], hp: AdaptiveHyper) -> Vector:
    """omega = mean + noise * u with u in [-1, 1]^d, reflected into the bounds; integers rounded (halves up).

    Reflecting rather than clipping keeps the perturbation informative at a bound: a centre sitting
    on `low` still probes low + |noise * u| instead of repeating `low`, which would leave the finite
    differences of `difficulty_gradient` empty and the teacher stuck.
    """
    out = []
    for i, (m, ui) in enumerate(zip(mean, u)):
        lo, hi = hp.low[i], hp.high[i]
        x = m + hp.noise[i] * ui
        x = 2 * lo - x if x < lo else (2 * hi - x if x > hi else x)
        x = min(max(x, lo), hi)  # a reflection can overshoot a range narrower than the noise
        out.append(float(round_half_up(x)) if hp.integer[i] else float(x))
    return tuple(out)


def adaptive_init(start: Sequence[float], u: Sequence[float], hp: AdaptiveHyper) -> AdaptiveState:
    """The teacher before its first update: centre at `start`, the student on a perturbation of it."""
    mean = tuple(float(x) for x in start)
    return AdaptiveState(mean, perturb(mean, u, hp))


def adaptive_update(state: AdaptiveState, loss: float, u: Sequence[float], hp: AdaptiveHyper) -> AdaptiveState:
    """One teacher step of Algorithm 1: observe L on the current omega, estimate g, sign-step, perturb."""
    keep = hp.window + 1  # `window` finite differences need window + 1 observations
    omegas = (state.history_omega + (state.omega,))[-keep:]
    losses = (state.history_loss + (float(loss),))[-keep:]
    grad = difficulty_gradient(omegas, losses)
    mean = sign_step(state.mean, grad, loss, hp)
    return AdaptiveState(mean, perturb(mean, u, hp), omegas, losses, state.updates + 1, tuple(grad))
