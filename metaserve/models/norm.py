"""Batch norm whose statistics come from a chosen set: the query batch itself, or the task's support set.

`TaskNorm2d` holds the affine parameters (weight, bias) of a batch-norm layer and no running
statistics, so a model built from it stays a pure function of its parameters (vmappable over tasks,
differentiable through adaptation). How it normalises is decided per call:

- `stats=None` (*transductive*, the MAML convention): each forward pass is normalised with the mean
  and variance of the batch it is given, y = w * (x - mu_B) / sqrt(var_B + eps) + b.
- `stats=(mu_S, var_S)` (*support statistics*, the non-transductive mode of TaskNorm; Bronskill et
  al., ICML 2020, section 3): the moments are computed on the support set at every layer (`collect`)
  and applied to the support and every query, so a query's output depends only on the support set
  and on that query.

A model threads the statistics through its layers with `run_layers`: a flat tuple
(mu_1, var_1, mu_2, var_2, ...) in layer order, as returned when collecting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

Stats = tuple[Tensor, ...]  # (mean_1, var_1, mean_2, var_2, ...): one pair per TaskNorm2d, in layer order
MODES = ("transductive", "support")  # the normalisation modes: batch statistics, or the support set's
EPS = 1e-5  # nn.BatchNorm2d's default


class TaskNorm2d(nn.Module):
    """Batch norm over [batch, C, H, W] with the statistics of the batch or given ones; no running statistics.

    Parameter names (`weight`, `bias`) and initial values (ones, zeros) are nn.BatchNorm2d's, so
    checkpoints of either load into the other.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if stats is None:  # F.batch_norm in training mode: exactly nn.BatchNorm2d(track_running_stats=False)
            return nn.functional.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=EPS)
        mean, var = stats
        scale = self.weight * torch.rsqrt(var + EPS)
        return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of [batch, C, H, W]: the statistics batch norm normalises with."""
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


def leaves(layers: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """The layers of (nested) nn.Sequential containers, in order."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            yield from leaves(layer)
        else:
            yield layer


def run_layers(
    layers: Iterable[nn.Module], x: Tensor, stats: Sequence[Tensor] | None = None, collect: list[Tensor] | None = None
) -> Tensor:
    """Apply `layers` in order; every TaskNorm2d uses the next pair of `stats` (None: the batch's own).

    With `collect`, the batch statistics each TaskNorm2d normalised with are appended to it: run the
    support set with `collect=[]` to get the statistics that normalise its queries.
    """
    i = 0
    for layer in leaves(layers):
        if not isinstance(layer, TaskNorm2d):
            x = layer(x)
            continue
        pair = None if stats is None else (stats[i], stats[i + 1])
        if collect is not None and pair is None:
            pair = moments(x)
            collect.extend(pair)
        x = layer(x, pair)
        i += 2
    return x


def check_mode(mode: str) -> str:
    """`mode` if it is a normalisation mode, else a ValueError naming it and the allowed ones."""
    if mode not in MODES:
        raise ValueError(f"batch-norm mode {mode!r} is not one of {list(MODES)}")
    return mode
