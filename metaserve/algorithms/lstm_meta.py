"""The LSTM meta-learner (Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017).

The learner's parameters are the cell state of an LSTM that reads each coordinate's gradient and loss:

    c_t = f_t * c_{t-1} + i_t * (-grad_{theta_{t-1}} L_t),   theta_t = c_t                 (eq. 2)
    i_t = sigma(W_I [grad_{theta_{t-1}} L_t, L_t, theta_{t-1}, i_{t-1}] + b_I)             (eq. 3)
    f_t = sigma(W_F [grad_{theta_{t-1}} L_t, L_t, theta_{t-1}, f_{t-1}] + b_F)             (eq. 4)

i_t is a learned, per-coordinate learning rate and f_t a learned decay; c_0 (the learner's initial
parameters) is meta-learned too. As in their section 3.2/5 the LSTM is coordinate-wise with weights
shared over all coordinates, and two layers: a plain LSTM over the preprocessed (gradient, loss) of each
coordinate gives the gradient/loss part of eq. 3-4 (models/lstm_meta.py). Preprocessing (section 3.2,
after Andrychowicz et al. 2016, appendix A): x -> (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x).

Meta-gradient: the query loss after T updates, differentiated through the LSTM and the cell states, with
the learner's gradients and losses taken as constants (section 3.2, Figure 2: "we ignore" the second
derivatives through them). The whole support set is one batch per step (the paper iterates over
mini-batches of D_train).

Batch norm (section 3.4): the paper resets batch-norm statistics for every dataset and uses batch
statistics while training on D_train, so the meta-test never borrows statistics from other tasks.
metaserve's conv4 keeps no running statistics at all: every support and query set is normalised with its
own statistics (the query set transductively, a difference from the paper's running averages collected
on D_train); the batch-norm scale and shift are learner coordinates updated by the LSTM like any other.

`adapt` carries the LSTM state in the adapted dict, so adapting twice for one step each equals adapting
once for two steps (the adaptation curve of evaluation.py is the true unroll).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import grad, grad_and_value

from metaserve.algorithms.base import Algorithm, Metrics
from metaserve.algorithms.params import Params, detach
from metaserve.config import AlgorithmSection, task_kind
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register

LEARNER = "learner."
STATE = ("__lstm_h__", "__lstm_c__", "__lstm_i__", "__lstm_f__")  # adapted state carried between adapt calls


def preprocess(x: Tensor, p: float) -> Tensor:
    """[...] -> [..., 2]: (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x) (Andrychowicz et al., appendix A)."""
    big = x.abs() >= math.exp(-p)
    log = torch.log(x.abs().clamp_min(math.exp(-p))) / p
    first = torch.where(big, log, -torch.ones_like(x))
    return torch.stack([first, torch.where(big, torch.sign(x), math.exp(p) * x)], -1)


class LSTMMetaConfig(AlgorithmSection):
    """lstm-meta: T LSTM-driven updates of the learner per task."""

    name: Literal["lstm-meta"] = "lstm-meta"
    inner_steps: Annotated[int, Field(ge=1, le=100)] = 5  # T updates during meta-training
    eval_inner_steps: Annotated[int, Field(ge=1, le=1000)] | None = None  # T at meta-test (default: inner_steps)
    lstm_hidden: Annotated[int, Field(ge=1, le=256)] = 20  # first LSTM layer's size (the paper: 20)
    init_lr: Annotated[float, Field(gt=0, lt=1)] = 0.01  # the input gate at initialisation: sigma(b_I)
    preprocess_p: Annotated[float, Field(gt=0, le=50)] = 10.0  # p of the gradient/loss preprocessing


class LSTMMeta(Algorithm):
    """Contribution: the meta-gradient of the query loss after T LSTM updates, w.r.t. c_0 and the LSTM."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        preprocess_p: float = 10.0,
        vectorize: bool = True,
    ):
        super().__init__(model, kind, vectorize)
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps
        self.p = preprocess_p
        self.hidden = model.hidden
        self.meta_step = forward_fn(model, "meta_step")

    @classmethod
    def from_section(cls, cfg: LSTMMetaConfig, model: nn.Module, task: Any, vectorize: bool) -> LSTMMeta:
        """Built from its section (lstm_hidden and init_lr shape the model: models/lstm_meta.py)."""
        return cls(
            model,
            task_kind(task),
            inner_steps=cfg.inner_steps,
            eval_inner_steps=cfg.eval_inner_steps,
            preprocess_p=cfg.preprocess_p,
            vectorize=vectorize,
        )

    def initial_state(self, params: Params) -> tuple[Tensor, ...]:
        """h_0 = c_0 = 0 of the first layer and i_0 = f_0 = 0 for every learner coordinate."""
        n = sum(v.numel() for k, v in params.items() if k.startswith(LEARNER))
        ref = params[next(k for k in params if k.startswith(LEARNER))]
        return (ref.new_zeros(n, self.hidden), ref.new_zeros(n, self.hidden), ref.new_zeros(n), ref.new_zeros(n))

    def unroll(
        self, params: Params, x: Tensor, y: Tensor, steps: int, state: tuple[Tensor, ...]
    ) -> tuple[Params, tuple[Tensor, ...]]:
        """`steps` updates of eq. 2-4 from `params`; the learner's gradients and losses enter as constants."""
        names = [k for k in params if k.startswith(LEARNER)]
        shapes = [params[k].shape for k in names]
        sizes = [params[k].numel() for k in names]
        meta = {k: v for k, v in params.items() if not k.startswith(LEARNER) and k not in STATE}
        theta = torch.cat([params[k].reshape(-1) for k in names])
        h, c, i, f = state

        def learner_loss(learner: Params) -> Tensor:
            return self.loss({**meta, **learner}, x, y)

        for _ in range(steps):
            learner = {k: v.reshape(s) for k, v, s in zip(names, theta.split(sizes), shapes)}
            g, loss = grad_and_value(learner_loss)(learner)
            g = torch.cat([g[k].reshape(-1) for k in names]).detach()
            loss = loss.detach()
            inputs = torch.cat([preprocess(g, self.p), preprocess(loss, self.p).expand(g.shape[0], 2)], -1)
            theta, h, c, i, f = self.meta_step(meta, inputs, g, theta, h, c, i, f)
        learner = {k: v.reshape(s) for k, v, s in zip(names, theta.split(sizes), shapes)}
        return {**meta, **learner}, (h, c, i, f)

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        def query_loss_after_updates(p: Params) -> tuple[Tensor, Metrics]:
            adapted, _ = self.unroll(p, sx, sy, self.inner_steps, self.initial_state(p))
            return self.measure(adapted, qx, qy)

        g, post = grad(query_loss_after_updates, has_aux=True)(params)
        return g, {**post, **self.pre_metrics(params, qx, qy)}

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        params = detach(params)
        state = tuple(params[k] for k in STATE) if STATE[0] in params else self.initial_state(params)
        adapted, state = self.unroll({k: v for k, v in params.items() if k not in STATE}, x, y, steps, state)
        return {**detach(adapted), **dict(zip(STATE, (s.detach() for s in state)))}

    def predict(self, adapted: Params, x: Tensor, stats=None) -> Tensor:
        return self.forward({k: v for k, v in adapted.items() if k not in STATE}, x, stats)

    def measure(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        return super().measure({k: v for k, v in params.items() if k not in STATE}, x, y)


register(AlgorithmEntry("lstm-meta", LSTMMetaConfig, LSTMMeta.from_section, head="lstm-meta"))
