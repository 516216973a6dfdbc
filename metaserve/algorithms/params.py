"""Small pure helpers over parameter dicts, so each meta-update reads like its equation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

Params = dict[str, Tensor]


def add(a: Params, b: Params, scale: float = 1.0) -> Params:
    """a + scale * b."""
    return {k: a[k] + scale * b[k] for k in a}


def subtract(a: Params, b: Params) -> Params:
    """a - b."""
    return {k: a[k] - b[k] for k in a}


def scale(a: Params, factor: float) -> Params:
    """factor * a."""
    return {k: factor * v for k, v in a.items()}


def interpolate(a: Params, b: Params, weight: float) -> Params:
    """a + weight * (b - a): the point a fraction `weight` of the way from a to b."""
    return {k: a[k] + weight * (b[k] - a[k]) for k in a}


def total(updates: Iterable[Params]) -> Params:
    """Elementwise sum of parameter dicts."""
    it = iter(updates)
    out = {k: v.clone() for k, v in next(it).items()}
    for u in it:
        for k in out:
            out[k] += u[k]
    return out


def detach(a: Params) -> Params:
    """Copies cut from any autograd graph."""
    return {k: v.detach() for k, v in a.items()}


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """theta - lr * grad: one plain gradient step."""
    return {k: params[k] - lr * grads[k] for k in params}


def all_finite(a: Params) -> bool:
    """True when no entry is NaN or infinite."""
    return all(bool(torch.isfinite(v).all()) for v in a.values())
