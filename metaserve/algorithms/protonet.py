"""Prototypical networks (Snell, Swersky & Zemel, NeurIPS 2017), the metric-based baseline.

Prototype c_n = mean of the support embeddings of class n (eq. 1); a query is classified by a
softmax over negative squared Euclidean distances to the prototypes (eq. 2). The contribution is
the gradient of the episode's query cross-entropy, averaged and descended on by the outer step like
any meta-gradient. "Adapting" to a support set means computing its prototypes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, Metrics, OuterConfig
from metaserve.algorithms.params import Params, detach
from metaserve.models.functional import forward_fn


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means of support embeddings: [support, dim], [support] -> [ways, dim]."""
    # Not F.one_hot: it checks the label range with .item(), which vmap over tasks cannot do.
    onehot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(embeddings.dtype)  # [support, ways]
    return (onehot.T @ embeddings) / onehot.sum(0).unsqueeze(1)


def proto_logits(query_embeddings: Tensor, protos: Tensor) -> Tensor:
    """-||f(x) - c_n||^2 for every query and class: [query, ways]."""
    return -((query_embeddings.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)


class ProtoNet(Algorithm):
    """Episode-loss gradient as contribution; prototypes as the adapted state."""

    uses_head = False

    def __init__(self, model: nn.Module, kind: str, outer_cfg: OuterConfig, *, ways: int, vectorize: bool = True):
        if kind != "classification":
            raise ValueError(f"protonet needs a classification task, got a {kind} task")
        super().__init__(model, kind, outer_cfg, vectorize)
        self.ways = ways
        self.embed = forward_fn(model, "embed")

    def episode(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Metrics]:
        protos = prototypes(self.embed(params, sx), sy, self.ways)
        return self.score(proto_logits(self.embed(params, qx), protos), qy)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        g, metrics = grad(self.episode, has_aux=True)(params, sx, sy, qx, qy)
        return g, metrics

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        params = detach(params)
        return {**params, "__prototypes__": prototypes(self.embed(params, x), y, self.ways).detach()}

    def predict(self, adapted: Params, x: Tensor) -> Tensor:
        params = {k: v for k, v in adapted.items() if k != "__prototypes__"}
        return proto_logits(self.embed(params, x), adapted["__prototypes__"])
