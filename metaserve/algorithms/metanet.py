"""Meta Networks (Munkhdalai & Yu, ICML 2017), as Weng's survey ("Meta-Learning: Learning to Learn Fast",
section "Meta Networks") describes them, with the simplifications said below.

A base learner g (here: the output layer W_b over an embedding) and an embedding f (conv4 features and
a representation layer W_e) have slow weights learned across tasks; a meta learner generates fast
weights from loss gradients, at two levels:

  representation level (task):   theta^+ = F_w(grad_{W_e} L_emb(S))                (task-level fast weights)
  weight level (example):        phi^+_i = G_v(grad_{W_b} L_task(x_i, y_i)),  i in S   (one per support example)
  memory:                        M = [phi^+_i],  R = [r'_i],  r'_i = f_{theta, theta^+}(x_i)
  query x:                       r = f_{theta, theta^+}(x),  a = softmax_i cos(r, R_i),  phi^+ = sum_i a_i M_i
  output:                        g_{phi, phi^+}(r) = W_b r + b_b + phi^+ r                     (layer augmentation)

f_{theta, theta^+}(x) = relu(W_e h(x) + b_e) + relu(W_e^+ h(x)) (layer augmentation, section 3.3). The query
cross-entropy is differentiated end to end (through the generated fast weights and the gradients they
come from) w.r.t. all slow and meta weights: the contribution, averaged like any meta-gradient.

Simplifications (where the paper leaves choices open or 1-shot makes them degenerate):
- L_emb: the paper's representation loss verifies sampled support pairs (same class or not); with one
  shot every pair differs, so metaserve uses the support cross-entropy of the slow network instead.
- F_w and G_v are coordinate-wise MLPs on the preprocessed gradient (log/sign, Andrychowicz et al.; the
  paper's F_w is an LSTM over the T sampled pairs' gradients, which one mean gradient replaces).
- Fast weights only for the representation layer and the output layer; the conv layers stay slow.
- grad_{W_b} L_task(x_i) in closed form: (softmax(z_i) - onehot(y_i)) r'_i^T (linear layer + cross-entropy).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, Metrics
from metaserve.algorithms.lstm_meta import preprocess
from metaserve.algorithms.metric import one_hot
from metaserve.algorithms.params import Params, detach
from metaserve.config import AlgorithmSection
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register

STATE = ("__metanet_rep_fast__", "__metanet_memory__", "__metanet_keys__")


def cosine_attention(query: Tensor, keys: Tensor) -> Tensor:
    """a = softmax_i cos(r, R_i): [query, dim], [support, dim] -> [query, support]."""
    q = torch.nn.functional.normalize(query, dim=-1, eps=1e-8)
    k = torch.nn.functional.normalize(keys, dim=-1, eps=1e-8)
    return torch.softmax(q @ k.T, dim=-1)


class MetaNetConfig(AlgorithmSection):
    """metanet: slow weights + fast weights generated from loss gradients."""

    name: Literal["metanet"] = "metanet"
    embed_size: Annotated[int, Field(ge=1, le=4096)] = 64  # width of the representation layer (and of fast W_e^+ rows)
    meta_hidden: Annotated[int, Field(ge=1, le=1024)] = 20  # hidden units of F_w and G_v
    preprocess_p: Annotated[float, Field(gt=0, le=50)] = 10.0  # p of the gradient preprocessing


class MetaNet(Algorithm):
    """Contribution: the end-to-end gradient of the query loss; adapting = a support set's fast weights and memory."""

    def __init__(self, model: nn.Module, kind: str, *, ways: int, preprocess_p: float = 10.0, vectorize: bool = True):
        super().__init__(model, kind, vectorize)
        self.ways, self.p = ways, preprocess_p
        self.features = forward_fn(model, "features")
        self.represent = forward_fn(model, "represent")
        self.classify = forward_fn(model, "classify")
        self.generate = forward_fn(model, "generate")

    @classmethod
    def from_section(cls, cfg: MetaNetConfig, model: nn.Module, task: Any, vectorize: bool) -> MetaNet:
        return cls(model, "classification", ways=task.ways, preprocess_p=cfg.preprocess_p, vectorize=vectorize)

    def fast_weights(self, params: Params, sx: Tensor, sy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(W_e^+, M [support, ways, embed], R [support, embed]) of a support set."""
        h = self.features(params, sx)

        def embedding_loss(w_e: Tensor) -> Tensor:
            p = {**params, "represent_layer.weight": w_e}
            return torch.nn.functional.cross_entropy(self.classify(p, self.represent(p, h, None), None), sy)

        g_rep = grad(embedding_loss)(params["represent_layer.weight"])
        rep_fast = self.generate(params, "rep", preprocess(g_rep, self.p))
        r = self.represent(params, h, rep_fast)
        z = self.classify(params, r, None)
        g_base = (torch.softmax(z, -1) - one_hot(sy, self.ways, z.dtype)).unsqueeze(-1) * r.unsqueeze(-2)
        return rep_fast, self.generate(params, "weight", preprocess(g_base, self.p)), r

    def query_logits(self, params: Params, state: tuple[Tensor, Tensor, Tensor], qx: Tensor) -> Tensor:
        rep_fast, memory, keys = state
        r = self.represent(params, self.features(params, qx), rep_fast)
        phi = torch.einsum("qs,swe->qwe", cosine_attention(r, keys), memory)
        return self.classify(params, r, phi)

    def episode(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Metrics]:
        return self.score(self.query_logits(params, self.fast_weights(params, sx, sy), qx), qy)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        return grad(self.episode, has_aux=True)(params, sx, sy, qx, qy)

    @property
    def head_classes(self) -> int:
        """Its output layer is sized for task.ways: the most classes `adapt` can take (checked by the callers)."""
        return self.ways

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        params = detach({k: v for k, v in params.items() if k not in STATE})
        return {**params, **dict(zip(STATE, (s.detach() for s in self.fast_weights(params, x, y))))}

    def predict(self, adapted: Params, x: Tensor, stats=None) -> Tensor:
        """Query logits from the adapted state; `stats` is not used: the episode's batch norm is transductive here."""
        params = {k: v for k, v in adapted.items() if k not in STATE}
        return self.query_logits(params, tuple(adapted[k] for k in STATE), x)


register(
    AlgorithmEntry(
        "metanet",
        MetaNetConfig,
        MetaNet.from_section,
        head="metanet",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
