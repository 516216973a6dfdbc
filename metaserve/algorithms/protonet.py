"""Prototypical networks (Snell, Swersky & Zemel, NeurIPS 2017), the metric-based baseline.

Prototype c_n = mean of the support embeddings of class n (eq. 1); a query is classified by a
softmax over negative squared Euclidean distances to the prototypes (eq. 2), trained with the
query cross-entropy. The episode, contribution and adapt/predict are shared (algorithms/metric.py).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from metaserve.algorithms.metric import MetricLearner, class_means
from metaserve.algorithms.params import Params
from metaserve.config import AlgorithmSection
from metaserve.registry import AlgorithmEntry, register


def proto_logits(query_embeddings: Tensor, protos: Tensor) -> Tensor:
    """-||f(x) - c_n||^2 for every query and class: [query, ways]."""
    return -((query_embeddings.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)


class ProtoNetConfig(AlgorithmSection):
    """Prototypical networks (metric-based; no inner loop)."""

    name: Literal["protonet"] = "protonet"


class ProtoNet(MetricLearner):
    """Scores = negative squared distances to the class means of the support embeddings."""

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        return proto_logits(query, class_means(support, onehot))


register(
    AlgorithmEntry(
        "protonet",
        ProtoNetConfig,
        ProtoNet.from_section,
        head="embedding",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
