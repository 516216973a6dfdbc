"""What the metric learners share (protonet, matching, relation, siamese): the episode and its gradient.

An episode embeds the support and the query set with the model's `embed` (batch norm normalises the
support set with its own statistics, the queries with theirs, "transductive", or with the support
set's, "support"; models/norm.py), compares every query embedding with the support embeddings and
their one-hot labels, and gives scores [query, ways], higher = more likely.
A learner defines `compare` and, where its paper trains with another loss than cross-entropy on the
scores, `score` (and `episode_loss` when the loss needs more than the class scores).

The contribution is the gradient of the episode loss, averaged and descended on by the outer step
like any meta-gradient. "Adapting" to a support set stores its embeddings and one-hot labels, so
`predict` is `compare` against them: the same `MetaModel.adapt/predict` API as the gradient learners.
Nothing here has a fixed number of classes: `ways` sizes the one-hot labels of training episodes,
and `adapt(..., ways=N)` takes a support set of any N classes (prototypes, attention and relation
scores all come from the support labels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import STATE_PREFIX, Algorithm, Metrics, section_keywords, strip_state
from metaserve.algorithms.params import Params, detach
from metaserve.models.functional import forward_fn
from metaserve.models.norm import Stats

SUPPORT = f"{STATE_PREFIX}support_embeddings__"  # adapted state: support embeddings [support, dim]
LABELS = f"{STATE_PREFIX}support_onehot__"  # adapted state: their one-hot labels [support, ways]


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """[n] integer labels -> [n, ways] one-hot rows."""
    # Not F.one_hot: it checks the label range with .item(), which vmap over tasks cannot do.
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


def class_means(embeddings: Tensor, onehot: Tensor) -> Tensor:
    """Mean embedding of each class: [support, dim], [support, ways] -> [ways, dim]."""
    return (onehot.T @ embeddings) / onehot.sum(0).unsqueeze(1)


def accuracy(scores: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose highest score is the true class."""
    return (scores.argmax(-1) == labels).to(scores.dtype).mean()


class MetricLearner(Algorithm):
    """Episode-loss gradient as contribution; the embedded support set as the adapted state."""

    def __init__(self, model: nn.Module, kind: str, *, ways: int, vectorize: bool = True):
        if kind != "classification":
            raise ValueError(f"{type(self).__name__} needs a classification task, got a {kind} task")
        super().__init__(model, kind, vectorize)
        self.ways = ways
        self.embed = forward_fn(model, "embed")

    @classmethod
    def from_section(cls, cfg: Any, model: nn.Module, task: Any, vectorize: bool) -> MetricLearner:
        """Built from its config section (the registry's constructor), for `task.ways` classes."""
        return cls(model, "classification", ways=task.ways, vectorize=vectorize, **section_keywords(cfg))

    def compare(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, norm: str = "transductive"
    ) -> Tensor:
        """Scores [query, ways] of query embeddings against support embeddings and their one-hot labels.

        `norm` says how a comparison module with batch norm (relation) normalises: with the query
        pairs' statistics ("transductive") or with the support set's ("support").
        """
        raise NotImplementedError

    def episode_loss(
        self, params: Params, support: Tensor, onehot: Tensor, query: Tensor, qy: Tensor
    ) -> tuple[Tensor, Metrics]:
        """The training loss of one embedded episode; by default `score` of the class scores."""
        return self.score(self.compare(params, support, onehot, query, self.norm), qy)

    def episode(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Metrics]:
        stats = self.norm_stats(params, sx) if self.norm == "support" else None
        support, query = self.embed(params, sx), self.embed(params, qx, stats)
        return self.episode_loss(params, support, one_hot(sy, self.ways, support.dtype), query, qy)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        return grad(self.episode, has_aux=True)(params, sx, sy, qx, qy)

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None, ways: int | None = None) -> Params:
        """The support embeddings and their one-hot labels over `ways` classes (default: the training ways)."""
        params = strip_state(detach(params))
        support = self.embed(params, x).detach()
        return {**params, SUPPORT: support, LABELS: one_hot(y, ways or self.ways, support.dtype)}

    def predict(self, adapted: Params, x: Tensor, stats: Stats | None = None) -> Tensor:
        """Scores [query, ways]; with `stats` (the support set's, `norm_stats`) a query's scores depend on it alone."""
        params = strip_state(adapted)
        norm = "transductive" if stats is None else "support"
        return self.compare(params, adapted[SUPPORT], adapted[LABELS], self.embed(params, x, stats), norm)
