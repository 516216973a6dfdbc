"""The network of the LSTM meta-learner (Ravi & Larochelle, ICLR 2017): a learner plus the meta-learner's weights.

`LSTMMetaModel.learner` is the classifier (conv4) or regressor (mlp) whose parameters the meta-learner
updates; `LSTMMetaModel.meta` is the coordinate-wise two-layer LSTM of their section 5: a plain LSTM
cell over the preprocessed (gradient, loss) of each coordinate, then the modified cell whose state is the
parameter itself. Both live in one module so every meta-parameter (the learner's initial parameters
c_0 and the LSTM's weights) is in the one params dict: checkpointed, averaged and stepped like any other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaserve.models.metric_heads import LSTMCell

PREPROCESSED = 4  # per coordinate: (log|g|/p, sign g) and (log|L|/p, sign L), Andrychowicz et al. 2016, appendix A


class CoordinateLSTM(nn.Module):
    """Weights shared by every coordinate of the learner: one plain LSTM layer, then the two gates.

    i_t = sigma(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)   (eq. 3; h_t the first layer's output)
    f_t = sigma(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)   (eq. 4)
    c_t = f_t * c_{t-1} + i_t * (-grad_{theta_{t-1}} L_t),  theta_t = c_t   (eq. 2)

    Initialised as the paper prescribes (section 3.2): small weights, b_F large (f near 1: keep the
    parameters) and b_I = logit(init_lr), so the untrained meta-learner is SGD with step init_lr.
    """

    def __init__(self, hidden: int = 20, init_lr: float = 0.01, forget_bias: float = 5.0):
        super().__init__()
        self.layer1 = LSTMCell(PREPROCESSED, hidden, hidden)
        self.input_gate = nn.Linear(hidden + 2, 1)
        self.forget_gate = nn.Linear(hidden + 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.01, 0.01)
            self.input_gate.bias.fill_(math.log(init_lr / (1 - init_lr)))
            self.forget_gate.bias.fill_(forget_bias)

    def forward(
        self, x: Tensor, grad: Tensor, theta: Tensor, h: Tensor, c: Tensor, i: Tensor, f: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step for n coordinates: x [n, 4] preprocessed inputs, grad/theta/i/f [n], h/c [n, hidden].

        Returns (theta_t, h_t, c_t of the first layer, i_t, f_t).
        """
        h, c = self.layer1(x, h, c)
        i = torch.sigmoid(self.input_gate(torch.cat([h, theta[:, None], i[:, None]], -1)).squeeze(-1))
        f = torch.sigmoid(self.forget_gate(torch.cat([h, theta[:, None], f[:, None]], -1)).squeeze(-1))
        return f * theta - i * grad, h, c, i, f


class LSTMMetaModel(nn.Module):
    """The learner (its forward is the model's) and the meta-learner's weights (`meta_step`)."""

    def __init__(self, learner: nn.Module, hidden: int = 20, init_lr: float = 0.01):
        super().__init__()
        self.learner = learner
        self.meta = CoordinateLSTM(hidden, init_lr)
        self.hidden = hidden

    def forward(self, x: Tensor, stats=None) -> Tensor:
        return self.learner(x) if stats is None else self.learner(x, stats)

    def norm_stats(self, x: Tensor):
        """The learner network's batch-norm statistics of x (None for a network without batch norm)."""
        return self.learner.norm_stats(x) if hasattr(self.learner, "norm_stats") else None

    def meta_step(self, *args: Tensor) -> tuple[Tensor, ...]:
        """`CoordinateLSTM.forward`, reachable through `forward_fn(model, 'meta_step')`."""
        return self.meta(*args)
