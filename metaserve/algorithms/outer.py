"""The outer (meta) optimiser: pure (init, update) pairs over parameter dicts, chosen by `outer.optimizer`.

State is a dict of tensors, so it goes into a `weights_only` checkpoint as it is and resumes exactly.
Updates run as multi-tensor (`torch._foreach_*`) kernels, as torch.optim does: one call per
arithmetic step for all parameters rather than one per tensor, which is most of the learner's own
time when a meta-step computes for only milliseconds. The inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from metaserve.algorithms.params import Params, scale


@dataclass(frozen=True)
class OuterOptimizer:
    """`init(params) -> state` and `update(params, direction, state) -> (params, state)`, both pure."""

    init: Callable[[Params], dict]
    update: Callable[[Params, Params, dict], tuple[Params, dict]]


def build_outer(section: Any) -> OuterOptimizer:
    """The optimiser of an `outer:` config section (`optimizer`: adam | sgd, `lr`)."""
    lr = section.lr
    if section.optimizer == "adam":
        return OuterOptimizer(adam_init, lambda p, g, s: adam_update(p, g, s, lr))
    if section.optimizer == "sgd":
        return OuterOptimizer(lambda p: {}, lambda p, g, s: sgd_update(p, g, s, lr))
    raise ValueError(f"outer.optimizer={section.optimizer!r} is not one of ['adam', 'sgd']")


def descent_direction(contribution: Literal["gradient", "delta"], mean: Params) -> Params:
    """What the optimiser descends on: a meta-gradient as it is, a parameter delta negated (Reptile,
    Nichol et al. 2018: theta <- theta + eps * mean delta is SGD on -delta; with Adam, the paper's variant)."""
    return mean if contribution == "gradient" else scale(mean, -1.0)


def adam_init(params: Params) -> dict:
    """Zero moments and step 0 (Kingma & Ba 2015, Algorithm 1)."""
    zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
    return {"step": torch.zeros((), dtype=torch.int64), "m": zeros(), "v": zeros()}


def adam_update(
    params: Params, grad: Params, state: dict, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> tuple[Params, dict]:
    """One bias-corrected Adam descent step on `grad` (Kingma & Ba 2015, Algorithm 1)."""
    b1, b2 = betas
    t = int(state["step"]) + 1
    names = list(params)
    p, g = [params[k] for k in names], [grad[k] for k in names]
    m = torch._foreach_lerp([state["m"][k] for k in names], g, 1 - b1)  # b1 m + (1 - b1) g
    v = torch._foreach_mul([state["v"][k] for k in names], b2)
    torch._foreach_addcmul_(v, g, g, value=1 - b2)
    denom = torch._foreach_sqrt(v)  # sqrt(v / c2) + eps, in torch.optim's order of operations
    torch._foreach_div_(denom, (1 - b2**t) ** 0.5)
    torch._foreach_add_(denom, eps)
    new = torch._foreach_addcdiv(p, m, denom, value=-lr / (1 - b1**t))
    return dict(zip(names, new)), {
        "step": torch.tensor(t, dtype=torch.int64),
        "m": dict(zip(names, m)),
        "v": dict(zip(names, v)),
    }


def sgd_update(params: Params, grad: Params, state: dict, lr: float) -> tuple[Params, dict]:
    """theta - lr * grad; SGD carries no state."""
    names = list(params)
    return dict(zip(names, torch._foreach_add([params[k] for k in names], [grad[k] for k in names], alpha=-lr))), state
