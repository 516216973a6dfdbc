"""Independent numerical references shared by the maths tests (no metaserve code inside)."""
from __future__ import annotations

from typing import Callable

import torch

Params = dict[str, torch.Tensor]


def finite_differences(f: Callable[[Params], object], theta: Params, eps: float = 1e-6) -> Params:
    """Central differences of a scalar function of a parameter dict, one entry at a time."""
    out = {}
    for name, value in theta.items():
        g = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {n: t.clone() for n, t in theta.items()}
            minus = {n: t.clone() for n, t in theta.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            g.view(-1)[i] = (float(f(plus)) - float(f(minus))) / (2 * eps)
        out[name] = g
    return out


def assert_params_close(a: Params, b: Params, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def relative_gap(a: Params, b: Params) -> float:
    """||a - b|| / ||b|| over all entries."""
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    den = sum(float((b[k] ** 2).sum()) for k in b) ** 0.5
    return num / den
