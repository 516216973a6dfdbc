"""Memory-augmented neural networks (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

A controller reads and writes an external memory M_t [slots, size]. Reads by cosine similarity:

    K(k_t, M_t(i)) = k_t . M_t(i) / (||k_t|| ||M_t(i)||)                                   (eq. 2)
    w^r_t(i) = softmax_i K(k_t, M_t(i))                                                      (eq. 3)
    r_t = sum_i w^r_t(i) M_t(i)                                                              (eq. 4)

Writes by least-recently-used access (LRUA):

    w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t                                                  (eq. 5)
    w^lu_t(i) = 1 if w^u_t(i) is the smallest usage, else 0  (m(w^u_t, n) with n = 1 read)   (eq. 6)
    w^w_t = sigma(alpha_t) w^r_{t-1} + (1 - sigma(alpha_t)) w^lu_{t-1}                        (eq. 7)
    M_t(i) = M_{t-1}(i) + w^w_t(i) k_t, after zeroing the least-used slot of w^lu_{t-1}       (eq. 8)

Each step writes, then reads the written memory with the same key (as eq. 2-8 index them).

An episode is a label-offset sequence (section 3): input (x_t, y_{t-1}). The task's support set is
presented in an order that depends on the images only (a fixed pseudo-random projection of the pixels
sorted), so no label pattern repeats across tasks and the run stays a pure function of config and seed;
then every query is one more step from the state after the last support (input: the query image and the
last support label), all queries from the same state, so predictions never depend on other queries'
labels, which `predict` does not have. Training loss: the cross-entropy of every step's prediction
(supports and queries, as the paper trains on whole sequences); the reported loss/accuracy: the queries.
Simplifications: one read head; the image enters through the conv4 encoder, not as raw pixels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, Metrics
from metaserve.algorithms.metric import accuracy, one_hot
from metaserve.algorithms.params import Params, detach
from metaserve.config import AlgorithmSection
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register

STATE = (
    "__mann_memory__",
    "__mann_usage__",
    "__mann_read_w__",
    "__mann_lu_w__",
    "__mann_h__",
    "__mann_c__",
    "__mann_read__",
    "__mann_label__",
)


def cosine_read(key: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
    """(w^r_t, r_t) for keys [..., size] against memory [..., slots, size] (eq. 2-4)."""
    k = torch.nn.functional.normalize(key, dim=-1, eps=1e-8)
    m = torch.nn.functional.normalize(memory, dim=-1, eps=1e-8)
    weights = torch.softmax((m @ k.unsqueeze(-1)).squeeze(-1), dim=-1)
    return weights, (weights.unsqueeze(-1) * memory).sum(-2)


def least_used(usage: Tensor) -> Tensor:
    """w^lu: one-hot of the least-used slot (eq. 6 with one read; the lowest index among ties)."""
    slots = torch.arange(usage.shape[-1], device=usage.device)
    return (slots == usage.argmin(-1, keepdim=True)).to(usage.dtype)


def lru_write(memory: Tensor, key: Tensor, alpha: Tensor, read_prev: Tensor, lu_prev: Tensor) -> tuple[Tensor, Tensor]:
    """(M_t, w^w_t): eq. 7-8, the least-used slot of w^lu_{t-1} zeroed before the write."""
    gate = torch.sigmoid(alpha).unsqueeze(-1)
    write = gate * read_prev + (1 - gate) * lu_prev
    return memory * (1 - lu_prev).unsqueeze(-1) + write.unsqueeze(-1) * key.unsqueeze(-2), write


class MANNConfig(AlgorithmSection):
    """mann: controller + LRUA memory on label-offset sequences."""

    name: Literal["mann"] = "mann"
    controller: Literal["lstm", "feedforward"] = "lstm"
    controller_hidden: Annotated[int, Field(ge=1, le=1024)] = 64
    memory_slots: Annotated[int, Field(ge=2, le=4096)] = 32  # N rows of M_t
    memory_size: Annotated[int, Field(ge=1, le=1024)] = 16  # width of a row (and of the key)
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.95  # usage decay of eq. 5


class MANN(Algorithm):
    """Contribution: the gradient of the sequence cross-entropy; adapting = reading the support sequence into memory."""

    def __init__(
        self, model: nn.Module, kind: str, *, ways: int, memory_slots: int, gamma: float, vectorize: bool = True
    ):
        super().__init__(model, kind, vectorize)
        self.ways, self.slots, self.gamma = ways, memory_slots, gamma
        self.embed = forward_fn(model, "embed")
        self.control = forward_fn(model, "control")
        self.output = forward_fn(model, "output")
        self.hidden, self.size = model.controller_hidden, model.memory_size

    @classmethod
    def from_section(cls, cfg: MANNConfig, model: nn.Module, task: Any, vectorize: bool) -> MANN:
        return cls(
            model, "classification", ways=task.ways, memory_slots=cfg.memory_slots, gamma=cfg.gamma, vectorize=vectorize
        )

    def order(self, x: Tensor) -> Tensor:
        """A presentation order that depends on the images only: a fixed projection of the pixels, sorted."""
        flat = x.flatten(1)
        proj = torch.sin(12.9898 * torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=x.dtype))
        return torch.argsort(flat @ proj)

    def initial_state(self, ref: Tensor) -> tuple[Tensor, ...]:
        """M_0 = 1e-6 (cosine needs nonzero rows), zero usage and read weights, w^lu_0 = slot 0, zero controller."""
        z = ref.new_zeros
        lu = least_used(z(self.slots))
        return (
            z(self.slots, self.size) + 1e-6,
            z(self.slots),
            z(self.slots),
            lu,
            z(self.hidden),
            z(self.hidden),
            z(self.size),
            z(self.ways),
        )

    def step(self, params: Params, x_emb: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One time step: controller, LRUA write, cosine read, logits. `state` lacks only the next label."""
        memory, usage, read_w, lu, h, c, r, label = state
        h, c, key, alpha = self.control(params, torch.cat([x_emb, label, r], -1), h, c)
        memory, write_w = lru_write(memory, key, alpha, read_w, lu)
        read_w, r = cosine_read(key, memory)
        usage = self.gamma * usage + read_w + write_w
        return self.output(params, h, r), (memory, usage, read_w, least_used(usage), h, c, r, label)

    def read_support(self, params: Params, sx: Tensor, sy: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """The support sequence in its image-given order: (logits [S, ways], labels [S], final state)."""
        order = self.order(sx)
        xs, ys = self.embed(params, sx[order]), sy[order]
        labels = one_hot(ys, self.ways, xs.dtype)
        state, logits = self.initial_state(xs), []
        for t in range(xs.shape[0]):
            out, state = self.step(params, xs[t], state)
            logits.append(out)
            state = state[:-1] + (labels[t],)  # y_t is the next step's input (label offset)
        return torch.stack(logits), ys, state

    def query_logits(self, params: Params, state: tuple[Tensor, ...], qx: Tensor) -> Tensor:
        """Every query as one step from the same state: [query, ways]."""
        q = self.embed(params, qx)
        batched = tuple(s.unsqueeze(0).expand(q.shape[0], *s.shape) for s in state)
        return self.step(params, q, batched)[0]

    def sequence_loss(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Metrics]:
        support_logits, ys, state = self.read_support(params, sx, sy)
        logits = self.query_logits(params, state, qx)
        loss = torch.nn.functional.cross_entropy(torch.cat([support_logits, logits]), torch.cat([ys, qy]))
        query_loss = torch.nn.functional.cross_entropy(logits, qy)
        return loss, {"loss": query_loss.detach(), "acc": accuracy(logits, qy).detach()}

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        return grad(self.sequence_loss, has_aux=True)(params, sx, sy, qx, qy)

    @property
    def head_classes(self) -> int:
        """Its output layer is sized for task.ways: the most classes `adapt` can take (checked by the callers)."""
        return self.ways

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        params = detach({k: v for k, v in params.items() if k not in STATE})
        _, _, state = self.read_support(params, x, y)
        return {**params, **dict(zip(STATE, (s.detach() for s in state)))}

    def predict(self, adapted: Params, x: Tensor, stats=None) -> Tensor:
        """Query logits from the adapted state; `stats` is not used: the episode's batch norm is transductive here."""
        params = {k: v for k, v in adapted.items() if k not in STATE}
        return self.query_logits(params, tuple(adapted[k] for k in STATE), x)


register(
    AlgorithmEntry(
        "mann",
        MANNConfig,
        MANN.from_section,
        head="mann",
        evaluation="closed-form",
        tasks=("classification",),
        reports_pre=False,
        fixed_ways=True,
    )
)
