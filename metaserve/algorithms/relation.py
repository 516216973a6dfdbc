"""Relation networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

Each class is represented by the element-wise sum of its support embeddings (section 3.3, K-shot);
the relation score of query x_j and class i is r_ij = g_phi(C(f(x_i), f(x_j))) in (0, 1) (eq. 1,
C = concatenation, g_phi = the relation module of models/metric_heads.py). Trained with the MSE of
the scores against the one-hot query labels (eq. 3; a mean where the paper sums, a constant
rescaling of the step); the predicted class is the highest score.

Our relation module is two fully connected layers on the flattened conv4 features (28 px images pool
to 1x1), where Sung et al. use two conv blocks then two FC layers on 5x5 feature maps.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from metaserve.algorithms.base import Metrics
from metaserve.algorithms.metric import MetricLearner, accuracy, one_hot
from metaserve.algorithms.params import Params
from metaserve.config import AlgorithmSection
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register


def relation_pairs(classes: Tensor, query: Tensor) -> Tensor:
    """C(f(x_i), f(x_j)) for every query j and class i: [ways, dim], [query, dim] -> [query, ways, 2 dim]."""
    q, n = query.shape[0], classes.shape[0]
    return torch.cat([classes.unsqueeze(0).expand(q, n, -1), query.unsqueeze(1).expand(q, n, -1)], dim=-1)


class RelationConfig(AlgorithmSection):
    """Relation networks (Sung et al. 2018): a learned relation module scores (class, query) pairs."""

    name: Literal["relation"] = "relation"


class Relation(MetricLearner):
    """Scores = relation module on (class sum, query) embedding pairs; loss = MSE against one-hot."""

    def __init__(self, model: nn.Module, kind: str, *, ways: int, vectorize: bool = True):
        super().__init__(model, kind, ways=ways, vectorize=vectorize)
        self.relate = forward_fn(model, "relate")
        self.relate_stats = forward_fn(model, "relate_stats")

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        classes = onehot.T @ support
        # support: the relation module's batch norms use the statistics of the (class, support image) pairs
        stats = self.relate_stats(params, relation_pairs(classes, support)) if norm == "support" else None
        return self.relate(params, relation_pairs(classes, query), stats)  # [query, ways]

    def score(self, out: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        loss = ((out - one_hot(y, out.shape[-1], out.dtype)) ** 2).mean()
        return loss, {"loss": loss.detach(), "acc": accuracy(out, y).detach()}


register(
    AlgorithmEntry(
        "relation",
        RelationConfig,
        Relation.from_section,
        head="relation",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
