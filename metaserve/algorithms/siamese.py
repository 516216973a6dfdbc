"""Siamese neural networks for one-shot image recognition (Koch, Zemel & Salakhutdinov, ICML 2015 workshop).

Twin embeddings h1 = f(x1), h2 = f(x2) share their parameters; p(same) = sigma(sum_j alpha_j |h1_j - h2_j| + b)
(section 3.1). Trained as verification: every (query, support) pair of an episode is a same or
different pair, scored with the binary cross-entropy of section 3.1 (without its L2 term), the two kinds
weighted equally as in Koch et al.'s balanced pair sets. One-shot prediction (section 4.3): the
support class with the highest score; with K > 1 shots a class scores as its best-matching support.
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


def balanced_bce(logits: Tensor, same: Tensor) -> Tensor:
    """Binary cross-entropy of 'same' logits, the mean over same pairs and over different pairs weighted equally."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, same, reduction="none")
    return 0.5 * ((bce * same).sum() / same.sum() + (bce * (1 - same)).sum() / (1 - same).sum())


def best_per_class(logits: Tensor, onehot: Tensor) -> Tensor:
    """Each query's highest pair logit among the supports of each class: [query, support] -> [query, ways]."""
    q, (s, n) = logits.shape[0], onehot.shape
    other_class = (onehot.T == 0).unsqueeze(0).expand(q, n, s)
    return logits.unsqueeze(1).expand(q, n, s).masked_fill(other_class, float("-inf")).amax(-1)


class SiameseConfig(AlgorithmSection):
    """Siamese networks (Koch et al. 2015): a learned verifier of same-class pairs."""

    name: Literal["siamese"] = "siamese"


class Siamese(MetricLearner):
    """Scores = best verification logit among each class's supports; loss = balanced pair BCE."""

    def __init__(self, model: nn.Module, kind: str, *, ways: int, vectorize: bool = True):
        super().__init__(model, kind, ways=ways, vectorize=vectorize)
        self.verify = forward_fn(model, "verify")

    def pair_logits(self, params: Params, support: Tensor, query: Tensor) -> Tensor:
        """Logit of 'same' for every (query, support) pair: [query, support]."""
        return self.verify(params, (query.unsqueeze(1) - support.unsqueeze(0)).abs())

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        return best_per_class(self.pair_logits(params, support, query), onehot)

    def episode_loss(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, qy: Tensor
    ) -> tuple[Tensor, Metrics]:
        same = one_hot(qy, onehot.shape[1], support.dtype) @ onehot.T  # [query, support]: 1 for a same-class pair
        logits = self.pair_logits(params, support, query)
        loss = balanced_bce(logits, same)
        acc = accuracy(best_per_class(logits, onehot), qy)
        return loss, {"loss": loss.detach(), "acc": acc.detach()}

    def score(self, out: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        """On class scores (`predict`): the balanced BCE of each query's best pair per class (the training loss
        when K = 1)."""
        loss = balanced_bce(out, one_hot(y, out.shape[-1], out.dtype))
        return loss, {"loss": loss.detach(), "acc": accuracy(out, y).detach()}


register(
    AlgorithmEntry(
        "siamese",
        SiameseConfig,
        Siamese.from_section,
        head="siamese",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
