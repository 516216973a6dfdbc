"""Finn et al.'s (2017) Omniglot network: 4 x [conv3x3, batch norm, ReLU, 2x2 max-pool] + linear head.

Batch norm keeps no running statistics (models/norm.py): by default every forward pass normalises
with the statistics of the batch it sees, i.e. each task's own support or query set (the MAML
convention, "transductive"); given `stats` (from `norm_stats` on a support set) it normalises with
those instead, so a query's output no longer depends on the other queries (TaskNorm's support
statistics). Either way the model is a pure function of its parameters, so it can be vmapped over
tasks and differentiated through adaptation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaserve.models.norm import Stats, TaskNorm2d, run_layers


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        TaskNorm2d(cout),
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

    def embed(self, x: Tensor, stats: Stats | None = None) -> Tensor:
        """Flattened features, shape [batch, embedding_dim]; `stats` None: normalised with x's own statistics."""
        return torch.flatten(run_layers(self.features, x, stats), start_dim=1)

    def norm_stats(self, x: Tensor) -> Stats:
        """The batch-norm statistics of every layer of the embedding on the set x (a support set)."""
        collected: list[Tensor] = []
        run_layers(self.features, x, collect=collected)
        return tuple(collected)

    def forward(self, x: Tensor, stats: Stats | None = None) -> Tensor:  # x: [batch, channels, H, W]
        return self.head(self.embed(x, stats))
