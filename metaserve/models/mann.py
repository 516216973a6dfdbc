"""The network of the memory-augmented neural network (MANN; Santoro et al., ICML 2016).

An image encoder (conv4 without head: metaserve's images are read by conv4, where the paper feeds raw
pixels), a controller (LSTM or feed-forward) over [encoded x_t, one-hot y_{t-1}, r_{t-1}], the heads
that turn its output into the memory key k_t and the write gate alpha_t, and the output layer
o_t = W_o [h_t, r_t] (class logits). The memory itself is state, not a parameter: algorithms/mann.py.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaserve.models.conv4 import Conv4
from metaserve.models.metric_heads import LSTMCell


class MANNModel(nn.Module):
    """conv4 encoder + controller + key/gate heads + output layer, for `ways` classes and `memory_size` wide slots."""

    def __init__(
        self,
        in_channels: int,
        conv_hidden: int,
        image_size: int,
        ways: int,
        *,
        controller: Literal["lstm", "feedforward"] = "lstm",
        controller_hidden: int = 64,
        memory_size: int = 16,
    ):
        super().__init__()
        self.encoder = Conv4(in_channels, 0, conv_hidden, image_size)
        width = self.encoder.embedding_dim + ways + memory_size
        self.lstm = controller == "lstm"
        hidden = controller_hidden
        self.controller = LSTMCell(width, hidden, hidden) if self.lstm else nn.Linear(width, hidden)
        self.key = nn.Linear(controller_hidden, memory_size)
        self.gate = nn.Linear(controller_hidden, 1)
        self.out = nn.Linear(controller_hidden + memory_size, ways)
        self.controller_hidden = controller_hidden
        self.memory_size = memory_size

    def embed(self, x: Tensor) -> Tensor:
        """Encoded images [batch, embedding_dim] (batch norm over the batch given: a support or a query set)."""
        return self.encoder.embed(x)

    def control(self, inputs: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(h_t, c_t, k_t, alpha_t) from the controller input [..., width] and its state (c unused if feed-forward)."""
        if self.lstm:
            h, c = self.controller(inputs, h, c)
        else:
            h = torch.relu(self.controller(inputs))
        return h, c, torch.tanh(self.key(h)), self.gate(h).squeeze(-1)

    def output(self, h: Tensor, r: Tensor) -> Tensor:
        """Class logits o_t = W_o [h_t, r_t]."""
        return self.out(torch.cat([h, r], -1))
