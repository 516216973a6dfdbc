"""The sinusoid regressor of Finn et al. (2017): 1-40-40-1 with ReLU."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network; `hidden=(40, 40)` is the MAML paper's sinusoid model."""

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden: tuple[int, ...] = (40, 40)):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
