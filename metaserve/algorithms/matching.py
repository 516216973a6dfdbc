"""Matching networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

y_hat = sum_i a(x_hat, x_i) y_i (eq. 1) with a = softmax over the cosine similarities
c(f(x_hat), g(x_i)) (eq. 2): the prediction is an attention-weighted mix of the one-hot support labels.
Trained with the query cross-entropy -log y_hat[y]; the scores are log y_hat (log-probabilities, so
cross-entropy on them is exactly that loss).

The cosine is multiplied by an inverse temperature s before the softmax,
a(x_hat, x_i) = exp(s c_i) / sum_j exp(s c_j), as implementations of the paper do (a fixed or learned
scale, e.g. 10 in Gidaris & Komodakis 2018's matching-network baseline): with s = 1 (eq. 2 as printed)
c in [-1, 1] bounds the softmax, so even a perfect embedding, with the right support at cos 1 and the
other N-1 at cos -1, keeps the loss above log(1 + (N-1) e^-2), 1.27 at N = 20 (and 20-way training
stalls well above that, at ~2.35). `scale` sets s; 1 gives the unscaled kernel.

f = g = the conv4 embedding, or with `fce` the full-context embeddings of appendix A.2
(models/metric_heads.py: a bidirectional LSTM over the support, an attention LSTM with `fce_steps`
processing steps for each query).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaserve.algorithms.metric import MetricLearner
from metaserve.algorithms.params import Params
from metaserve.config import AlgorithmSection, PositiveFloat, PositiveInt
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register


def attention_logits(query: Tensor, support: Tensor, scale: float = 1.0) -> Tensor:
    """s cos(f(x_hat), g(x_i)): [query, dim], [support, dim] -> [query, support], the logits of eq. 2's softmax."""
    cos = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(support, dim=-1).T
    return scale * cos


def attention(query: Tensor, support: Tensor, scale: float = 1.0) -> Tensor:
    """a(x_hat, x_i) = softmax_i s cos(f(x_hat), g(x_i)): [query, support] attention weights (eq. 2, scaled)."""
    return torch.softmax(attention_logits(query, support, scale), dim=-1)


def log_label_mixture(logits: Tensor, onehot: Tensor) -> Tensor:
    """log y_hat = log sum_i a_i y_i (eq. 1) from the attention logits: [query, support], [support, ways] ->
    [query, ways]."""
    # in log space: at a large scale a wrong class's attention underflows to 0 in float32 and log 0 = -inf
    per_class = torch.logsumexp(logits.unsqueeze(-1) + torch.log(onehot).unsqueeze(0), dim=1)
    return per_class - torch.logsumexp(logits, dim=-1, keepdim=True)


class MatchingConfig(AlgorithmSection):
    """Matching networks (Vinyals et al. 2016): cosine attention over support embeddings."""

    name: Literal["matching"] = "matching"
    # full-context embeddings (appendix A.2): a bidirectional LSTM over the support, attention LSTM for queries
    fce: bool = False
    fce_steps: PositiveInt = 2  # fce: processing steps K of the attention LSTM
    # inverse temperature s on the cosine before the attention softmax (1: eq. 2 unscaled, which stalls at
    # 20 ways); 10 as in common implementations, measured in BENCHMARKS.md (Reproduction)
    scale: PositiveFloat = 10.0


class Matching(MetricLearner):
    """Scores = log of the attention-weighted support labels."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        ways: int,
        fce: bool = False,
        fce_steps: int = 2,
        scale: float = 10.0,
        vectorize: bool = True,
    ):
        super().__init__(model, kind, ways=ways, vectorize=vectorize)
        self.fce = fce
        self.fce_steps = fce_steps
        self.scale = scale
        if fce:
            self.context_support = forward_fn(model, "context_support")
            self.context_query = forward_fn(model, "context_query")

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        if self.fce:
            support = self.context_support(params, support)
            query = self.context_query(params, query, support, self.fce_steps)
        return log_label_mixture(attention_logits(query, support, self.scale), onehot)  # [query, ways]


register(
    AlgorithmEntry(
        "matching",
        MatchingConfig,
        Matching.from_section,
        head="matching",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
