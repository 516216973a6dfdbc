"""Meta-SGD (Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017).

The meta-parameters are the initialisation theta AND a learning rate alpha of theta's shape; the
learner adapts by one elementwise-scaled gradient step (section 3, eq. 1-2 and Algorithm 1):

    theta' = theta - alpha o grad L_S(theta)                                  (adaptation)
    min_{theta, alpha} E_T [ L_Q(theta') ]                                     (meta-objective)

`inner_steps: k > 1` iterates the adaptation with the same alpha, phi_{j+1} = phi_j - alpha o grad L_S(phi_j).
`meta-sgd` differentiates L_Q(phi_k) with respect to theta and alpha through every inner step (second
order); `meta-sgd-1st` treats the inner gradients g_j as constants, so d/dtheta = grad L_Q(phi_k) and
d/dalpha = -(sum_j g_j) o grad L_Q(phi_k) (no Hessian terms; alpha is still learned).

alpha lives in the meta-parameter dict under `lr.<parameter name>` (added by `init_meta_params`), so it
is optimised by the outer optimiser, checkpointed, sent to Ray workers and used by `adapt` like theta.
It starts at `init_lr`: a constant, or uniform in [low, high] per entry (the paper draws it from
[0.005, 0.1], section 4.1). With `lr_bounds: [low, high]` the inner step uses alpha clamped to the bounds
(the stored alpha is left as learned; outside them its gradient is zero).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Algorithm, Metrics, section_keywords
from metaserve.algorithms.inner import LossFn
from metaserve.algorithms.params import Params, detach
from metaserve.config import AlgorithmSection, PositiveFloat, PositiveInt, task_kind
from metaserve.models.functional import forward_fn
from metaserve.registry import AlgorithmEntry, register

LR_PREFIX = "lr."  # alpha of parameter `name` is meta-parameter `lr.name`


class MetaSGDConfig(AlgorithmSection):
    """meta-sgd (second order) or meta-sgd-1st (first order): learned per-parameter inner learning rates."""

    name: Literal["meta-sgd", "meta-sgd-1st"] = "meta-sgd"
    inner_steps: PositiveInt = 1  # k during meta-training (the paper: 1)
    eval_inner_steps: PositiveInt | None = None  # k at meta-test (default: inner_steps)
    init_lr: PositiveFloat | tuple[PositiveFloat, PositiveFloat] = (0.005, 0.1)  # constant, or uniform [low, high]
    lr_bounds: tuple[float, float] | None = None  # clamp alpha to [low, high] in the inner step (None: unbounded)

    @model_validator(mode="after")
    def _bounds(self) -> MetaSGDConfig:
        init = (self.init_lr, self.init_lr) if isinstance(self.init_lr, float) else self.init_lr
        if init[0] > init[1]:
            raise ValueError(f"init_lr={list(init)} is an empty range: need low <= high")
        if self.lr_bounds is not None:
            lo, hi = self.lr_bounds
            if not (torch.isfinite(torch.tensor([lo, hi])).all() and lo < hi):
                raise ValueError(f"lr_bounds={[lo, hi]} is not a range: need finite low < high")
            if init[0] < lo or init[1] > hi:
                raise ValueError(
                    f"init_lr={self.init_lr} lies outside lr_bounds={[lo, hi]}: start alpha inside the bounds"
                )
        return self


def model_params(params: Params) -> Params:
    """theta: the entries that are the network's parameters (all but the `lr.` ones)."""
    return {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}


def split_lr(params: Params) -> tuple[Params, Params]:
    """(theta, alpha): the model's parameters and the learning rates keyed by the parameter they scale."""
    theta = model_params(params)
    return theta, {k: params[LR_PREFIX + k] for k in theta}


def meta_sgd_adapt(
    loss: LossFn, theta: Params, alpha: Params, x: Tensor, y: Tensor, steps: int, first_order: bool = False
) -> Params:
    """phi_{j+1} = phi_j - alpha o grad L_S(phi_j), phi_0 = theta (eq. 1, iterated k times).

    Differentiable in theta and alpha under an outer `torch.func.grad`; `first_order=True` treats each
    inner gradient as a constant.
    """
    phi = theta
    for _ in range(steps):
        g = grad(loss)(phi, x, y)
        phi = {k: phi[k] - alpha[k] * (g[k].detach() if first_order else g[k]) for k in phi}
    return phi


class MetaSGD(Algorithm):
    """Second-order Meta-SGD: the meta-gradient of L_Q(theta') in (theta, alpha) through the inner steps."""

    first_order = False

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        inner_steps: int,
        eval_inner_steps: int | None = None,
        init_lr: float | tuple[float, float] = (0.005, 0.1),
        lr_bounds: tuple[float, float] | None = None,
        vectorize: bool = True,
    ):
        super().__init__(model, kind, vectorize)
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps or inner_steps
        self.init_lr = init_lr
        self.lr_bounds = lr_bounds
        model_forward = forward_fn(model)
        # The network sees theta only; alpha entries are meta-parameters of the learner, not of the model.
        self.forward = lambda params, x, *stats: model_forward(model_params(params), x, *stats)

    @classmethod
    def from_section(cls, cfg: MetaSGDConfig, model: nn.Module, task: Any, vectorize: bool) -> MetaSGD:
        """The registry's constructor: every key of the section but `name` and `outer` is a keyword."""
        return cls(model, task_kind(task), vectorize=vectorize, **section_keywords(cfg))

    def init_meta_params(self, params: Params) -> Params:
        """theta plus alpha = init_lr (constant) or uniform in [low, high] from the global torch RNG,
        which `Learner.initial_params` has seeded: a pure function of the run's seed."""
        lo, hi = (self.init_lr, self.init_lr) if isinstance(self.init_lr, (int, float)) else self.init_lr
        alpha = {
            LR_PREFIX + k: lo + (hi - lo) * torch.rand(v.shape, dtype=v.dtype, device=v.device)
            for k, v in params.items()
        }
        return {**params, **alpha}

    def rates(self, alpha: Params) -> Params:
        """The alpha the inner step uses: clamped to `lr_bounds` when set."""
        if self.lr_bounds is None:
            return alpha
        return {k: v.clamp(*self.lr_bounds) for k, v in alpha.items()}

    def adapted(self, params: Params, x: Tensor, y: Tensor, steps: int, first_order: bool) -> Params:
        """theta' after `steps` inner steps, with the alpha entries carried along (so it adapts again)."""
        theta, alpha = split_lr(params)
        phi = meta_sgd_adapt(self.loss, theta, self.rates(alpha), x, y, steps, first_order)
        return {**phi, **{LR_PREFIX + k: v for k, v in alpha.items()}}

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        def query_loss_after_adaptation(p: Params) -> tuple[Tensor, Metrics]:
            return self.measure(self.adapted(p, sx, sy, self.inner_steps, self.first_order), qx, qy)

        g, post = grad(query_loss_after_adaptation, has_aux=True)(params)
        return g, {**post, **self.pre_metrics(params, qx, qy)}

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return detach(self.adapted(detach(params), x, y, steps, first_order=True))


class MetaSGD1st(MetaSGD):
    """First-order Meta-SGD: inner gradients are constants; theta and alpha are still both meta-learned."""

    first_order = True


register(AlgorithmEntry("meta-sgd", MetaSGDConfig, MetaSGD.from_section))
register(AlgorithmEntry("meta-sgd-1st", MetaSGDConfig, MetaSGD1st.from_section))
