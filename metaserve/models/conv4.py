"""Finn et al.'s (2017) Omniglot network: 4 x [conv3x3, batch norm, ReLU, 2x2 max-pool] + linear head.

Batch norm keeps no running statistics (`track_running_stats=False`): every forward pass normalises
with the statistics of the batch it sees, i.e. each task's own support or query set. This is the
MAML convention ("transductive" batch norm) and is what keeps the model a pure function of its
parameters, so it can be vmapped over tasks and differentiated through adaptation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """Four conv blocks; `embed` gives the flattened features (used by ProtoNets), `head` the logits."""

    def __init__(self, in_channels: int = 1, out_features: int = 5, hidden: int = 64, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(*[_block(in_channels if i == 0 else hidden, hidden) for i in range(4)])
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for conv4: need at least 16 pixels")
        self.embedding_dim = hidden * side * side
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features > 0 else nn.Identity()

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features, shape [batch, embedding_dim]."""
        return torch.flatten(self.features(x), start_dim=1)

    def forward(self, x: Tensor) -> Tensor:  # x: [batch, channels, H, W]
        return self.head(self.embed(x))
