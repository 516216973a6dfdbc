"""Matching networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

y_hat = sum_i a(x_hat, x_i) y_i (eq. 1) with a = softmax over the cosine similarities
c(f(x_hat), g(x_i)) (eq. 2): the prediction is an attention-weighted mix of the one-hot support labels.
Trained with the query cross-entropy -log y_hat[y]; the scores are log y_hat (log-probabilities, so
cross-entropy on them is exactly that loss). f = g = the conv4 embedding, or with `fce` the
full-context embeddings of appendix A.2 (models/metric_heads.py: a bidirectional LSTM over the
support, an attention LSTM with `fce_steps` processing steps for each query).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaserve.algorithms.metric import MetricLearner
from metaserve.algorithms.params import Params
from metaserve.config import AlgorithmSection, PositiveInt
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register


def attention(query: Tensor, support: Tensor) -> Tensor:
    """a(x_hat, x_i) = softmax_i cos(f(x_hat), g(x_i)): [query, dim], [support, dim] -> [query, support] (eq. 2)."""
    cos = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(support, dim=-1).T
    return torch.softmax(cos, dim=-1)


class MatchingConfig(AlgorithmSection):
    """Matching networks (Vinyals et al. 2016): cosine attention over support embeddings."""

    name: Literal["matching"] = "matching"
    # full-context embeddings (appendix A.2): a bidirectional LSTM over the support, attention LSTM for queries
    fce: bool = False
    fce_steps: PositiveInt = 2  # fce: processing steps K of the attention LSTM


class Matching(MetricLearner):
    """Scores = log of the attention-weighted support labels."""

    def __init__(
        self, model: nn.Module, kind: str, *, ways: int, fce: bool = False, fce_steps: int = 2, vectorize: bool = True
    ):
        super().__init__(model, kind, ways=ways, vectorize=vectorize)
        self.fce = fce
        self.fce_steps = fce_steps
        if fce:
            self.context_support = forward_fn(model, "context_support")
            self.context_query = forward_fn(model, "context_query")

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        if self.fce:
            support = self.context_support(params, support)
            query = self.context_query(params, query, support, self.fce_steps)
        return torch.log(attention(query, support) @ onehot)  # [query, ways]; never log 0: softmax of cos in [-1, 1]


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
