"""The conv4 embedding plus the learned comparison modules of the metric learners.

Each model is a `Conv4` without classifier head (its `embed` is the shared embedding f) and one extra
module, evaluated functionally like every model (`forward_fn(model, method)`):
- `RelationConv4.relate`: relation module g_phi on concatenated feature-map pairs (Sung et al. 2018, eq. 1
  and section 3.4: its embedding keeps spatial maps, the last two conv blocks do not pool; the relation
  module is two conv blocks then two fully connected layers, 8 hidden units, and a sigmoid).
- `SiameseConv4.verify`: weighted L1 distance and sigmoid unit, p = sigma(sum_j alpha_j |h1_j - h2_j|)
  (Koch, Zemel & Salakhutdinov 2015, section 3.1); returns the logit, the loss applies the sigmoid.
- `MatchingConv4.context_support/context_query`: full-context embeddings g(x_i, S) and f(x, S)
  (Vinyals et al. 2016, appendix A.1-A.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaserve.models.conv4 import Conv4, _block
from metaserve.models.norm import Stats, run_layers

RELATION_HIDDEN = 8  # Sung et al.'s relation module: a fully connected layer of 8 units, then one sigmoid unit


class LSTMCell(nn.Module):
    """gates = W x + U s + b split (i, f, g, o) as in torch.nn.LSTMCell; c' = s(f) c + s(i) tanh(g), h' = s(o) tanh(c').

    Written out (not nn.LSTMCell) so the recurrent state input may differ in size from the output
    (the attention LSTM reads [h, r]), and so it vmaps like any other layer.
    """

    def __init__(self, input_size: int, state_size: int, hidden_size: int):
        super().__init__()
        self.x2g = nn.Linear(input_size, 4 * hidden_size)
        self.s2g = nn.Linear(state_size, 4 * hidden_size, bias=False)

    def forward(self, x: Tensor, state: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = (self.x2g(x) + self.s2g(state)).chunk(4, dim=-1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


class RelationConv4(Conv4):
    """conv4 whose last two blocks keep the resolution (embedding [hidden, side, side], flattened) + relation module."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28):
        super().__init__(in_channels, 0, hidden, image_size)
        # Same parameters as conv4's blocks; only the max-pools of blocks 3 and 4 go (Sung et al. 2018, Fig. 2).
        self.features = nn.Sequential(
            *[
                _block(in_channels if i == 0 else hidden, hidden) if i < 2 else _block(hidden, hidden)[:3]
                for i in range(4)
            ]
        )
        self.side = image_size // 4
        if self.side // 4 < 1:
            raise ValueError(f"image_size={image_size} is too small for the relation network: need at least 16 pixels")
        self.hidden = hidden
        self.embedding_dim = hidden * self.side * self.side
        self.relation = nn.Sequential(
            _block(2 * hidden, hidden),
            _block(hidden, hidden),
            nn.Flatten(),
            nn.Linear(hidden * (self.side // 4) ** 2, RELATION_HIDDEN),
            nn.ReLU(),
            nn.Linear(RELATION_HIDDEN, 1),
        )

    def relate(self, pairs: Tensor, stats: Stats | None = None) -> Tensor:
        """Relation scores in (0, 1) of concatenated flattened pairs: [..., 2 * embedding_dim] -> [...].

        Flattened maps are channel-major, so joining two of them is joining their channels: each pair is
        read back as a [2 * hidden, side, side] map, the input of the relation module's conv blocks.
        `stats` (from `relate_stats`) normalise the module's batch norms; None: the pairs' own statistics.
        """
        maps = pairs.reshape(-1, 2 * self.hidden, self.side, self.side)
        return torch.sigmoid(run_layers(self.relation, maps, stats)).reshape(pairs.shape[:-1])

    def relate_stats(self, pairs: Tensor) -> Stats:
        """The relation module's batch-norm statistics on a set of pairs (the support set's class-support pairs)."""
        collected: list[Tensor] = []
        run_layers(self.relation, pairs.reshape(-1, 2 * self.hidden, self.side, self.side), collect=collected)
        return tuple(collected)


class SiameseConv4(Conv4):
    """conv4 twin embedding + verification unit on the componentwise L1 distance."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28):
        super().__init__(in_channels, 0, hidden, image_size)
        self.verifier = nn.Linear(self.embedding_dim, 1)

    def verify(self, distance: Tensor) -> Tensor:
        """Logit of 'same class' for componentwise distances |h1 - h2|: [..., d] -> [...]."""
        return self.verifier(distance).squeeze(-1)


class MatchingConv4(Conv4):
    """conv4 embedding + the full-context-embedding LSTMs (used only when `algorithm.fce` is on)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28):
        super().__init__(in_channels, 0, hidden, image_size)
        d = self.embedding_dim
        self.support_fwd = LSTMCell(d, d, d)
        self.support_bwd = LSTMCell(d, d, d)
        self.query_att = LSTMCell(d, 2 * d, d)

    def context_support(self, g0: Tensor) -> Tensor:
        """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i), a bidirectional LSTM over the support sequence g0 [S, d]."""
        zero = torch.zeros_like(g0[0])
        fwd, h, c = [], zero, zero
        for i in range(g0.shape[0]):
            h, c = self.support_fwd(g0[i], h, c)
            fwd.append(h)
        bwd, h, c = [], zero, zero
        for i in reversed(range(g0.shape[0])):
            h, c = self.support_bwd(g0[i], h, c)
            bwd.append(h)
        return torch.stack(fwd) + torch.stack(bwd[::-1]) + g0

    def context_query(self, f0: Tensor, g: Tensor, steps: int) -> Tensor:
        """f(x, S) = attLSTM(f'(x), g(S), K) for queries f0 [Q, d] against the support context g [S, d].

        h_hat_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1}); h_k = h_hat_k + f'(x);
        r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i); f = h_K. h_0, r_0, c_0 start at zero.
        """
        h, r, c = torch.zeros_like(f0), torch.zeros_like(f0), torch.zeros_like(f0)
        for _ in range(steps):
            h_hat, c = self.query_att(f0, torch.cat([h, r], dim=-1), c)
            h = h_hat + f0
            r = torch.softmax(h @ g.T, dim=-1) @ g
        return h


METRIC_MODELS: dict[str, type[Conv4]] = {"relation": RelationConv4, "siamese": SiameseConv4, "matching": MatchingConv4}
