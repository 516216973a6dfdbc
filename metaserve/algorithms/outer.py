"""The outer (meta) optimiser as pure init/update functions over parameter dicts.

State is a dict of tensors, so it goes into a `weights_only` checkpoint as it is and resumes exactly.
"""
from __future__ import annotations

import torch

from metaserve.algorithms.params import Params


def adam_init(params: Params) -> dict:
    """Zero moments and step 0 (Kingma & Ba 2015, Algorithm 1)."""
    zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
    return {"step": torch.zeros((), dtype=torch.int64), "m": zeros(), "v": zeros()}


def adam_update(params: Params, grad: Params, state: dict, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[Params, dict]:
    """One bias-corrected Adam descent step on `grad` (Kingma & Ba 2015, Algorithm 1)."""
    b1, b2 = betas
    t = int(state["step"]) + 1
    m = {k: b1 * state["m"][k] + (1 - b1) * grad[k] for k in params}
    v = {k: b2 * state["v"][k] + (1 - b2) * grad[k] * grad[k] for k in params}
    c1, c2 = 1 - b1**t, 1 - b2**t
    new = {k: params[k] - lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps) for k in params}
    return new, {"step": torch.tensor(t, dtype=torch.int64), "m": m, "v": v}


def sgd_update(params: Params, grad: Params, state: dict, lr: float) -> tuple[Params, dict]:
    """theta - lr * grad; SGD carries no state."""
    return {k: params[k] - lr * grad[k] for k in params}, state
