"""Parameter dicts and the functional view of a model.

Meta-parameters are plain `dict[str, Tensor]`; a model is only a structure evaluated with
`torch.func.functional_call`, so adapted parameters never touch the meta-parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]


def init_params(model: nn.Module, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Params:
    """Detached copies of the model's parameters: the initial meta-parameters."""
    return {k: v.detach().to(device=device, dtype=dtype).clone() for k, v in model.named_parameters()}


class _MethodAsForward(nn.Module):
    """Exposes `model.<method>` as `forward`, so functional_call can evaluate it."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.inner = model
        self.method = method

    def forward(self, *args) -> Tensor:
        return getattr(self.inner, self.method)(*args)


def forward_fn(model: nn.Module, method: str = "forward") -> Callable[[Params, Tensor], Tensor]:
    """A pure function params, x -> model output (or another method's output, e.g. 'embed'; extra
    positional arguments are passed on to the method)."""
    if method == "forward":  # optional batch-norm statistics (models/norm.py) as a second argument
        return lambda params, x, *stats: functional_call(model, params, (x, *[s for s in stats if s is not None]))
    bound = _MethodAsForward(model, method)
    return lambda params, *args: functional_call(bound, {f"inner.{k}": v for k, v in params.items()}, args)
