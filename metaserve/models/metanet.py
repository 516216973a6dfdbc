"""The network of Meta Networks (Munkhdalai & Yu, ICML 2017), in the simplified form of algorithms/metanet.py.

Slow weights: a conv4 encoder, the representation layer W_e (features -> embedding) and the base
learner's output layer W_b (embedding -> class logits). Meta weights: F_w and G_v, coordinate-wise MLPs
that map a preprocessed loss gradient (2 numbers per coordinate) to a fast weight. Slow and fast weights
are combined by layer augmentation (their section 3.3): a layer's output is the sum of its slow and its
fast branch, each with the layer's nonlinearity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaserve.models.conv4 import Conv4


class CoordinateMLP(nn.Module):
    """Fast weight of each coordinate from its preprocessed gradient: [..., 2] -> [...]."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class MetaNetModel(nn.Module):
    """conv4 features + representation layer + base output layer (slow) and the generators F_w, G_v (meta)."""

    def __init__(
        self,
        in_channels: int,
        conv_hidden: int,
        image_size: int,
        ways: int,
        *,
        embed_size: int = 64,
        meta_hidden: int = 20,
    ):
        super().__init__()
        self.encoder = Conv4(in_channels, 0, conv_hidden, image_size)
        self.represent_layer = nn.Linear(self.encoder.embedding_dim, embed_size)
        self.base = nn.Linear(embed_size, ways)
        self.rep_generator = CoordinateMLP(meta_hidden)  # F_w: representation-level (task) fast weights
        self.weight_generator = CoordinateMLP(meta_hidden)  # G_v: weight-level (example) fast weights

    def features(self, x: Tensor) -> Tensor:
        """conv4 features [batch, embedding_dim] (batch norm over the set given)."""
        return self.encoder.embed(x)

    def represent(self, h: Tensor, fast: Tensor | None) -> Tensor:
        """r = relu(W_e h + b_e) + relu(W_e^+ h): layer augmentation; fast=None is the slow branch alone."""
        slow = torch.relu(self.represent_layer(h))
        return slow if fast is None else slow + torch.relu(h @ fast.T)

    def classify(self, r: Tensor, fast: Tensor | None) -> Tensor:
        """logits = W_b r + b_b + phi^+ r, phi^+ [batch, ways, embed] one per row of r (or None: slow only)."""
        slow = self.base(r)
        return slow if fast is None else slow + torch.einsum("bwe,be->bw", fast, r)

    def generate(self, which: str, inputs: Tensor) -> Tensor:
        """F_w ('rep') or G_v ('weight') on preprocessed gradients [..., 2]."""
        return (self.rep_generator if which == "rep" else self.weight_generator)(inputs)
