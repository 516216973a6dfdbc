"""MAML and first-order MAML (Finn, Abbeel & Levine, ICML 2017).

MAML (Algorithm 2, eq. 1-2): theta' = theta - alpha * grad L_S(theta), iterated k times; the task's
contribution is the meta-gradient grad_theta L_Q(theta'), differentiated through all k inner steps
(second order). FOMAML (section 5.2) drops the second-order terms: contribution = grad L_Q at theta'.
The outer step descends on the batch mean: theta <- theta - beta * mean_i contribution_i.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torch.func import grad

from metaserve.algorithms.base import Metrics
from metaserve.algorithms.inner import InnerLoopLearner, InnerLoopSection, sgd_adapt
from metaserve.algorithms.params import Params, detach
from metaserve.registry import AlgorithmEntry, register


class MAMLConfig(InnerLoopSection):
    """maml (second order) or fomaml (first order)."""

    name: Literal["maml", "fomaml"] = "maml"


class MAML(InnerLoopLearner):
    """Second-order MAML: the meta-gradient flows through the k inner SGD steps."""

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        def query_loss_after_adaptation(p: Params) -> tuple[Tensor, Metrics]:
            adapted = sgd_adapt(self.loss, p, sx, sy, self.inner_lr, self.inner_steps)
            return self.measure_query(adapted, sx, qx, qy)

        g, post = grad(query_loss_after_adaptation, has_aux=True)(params)
        return g, {**post, **self.pre_metrics(params, qx, qy, sx)}


class FOMAML(InnerLoopLearner):
    """First-order MAML: the contribution is grad L_Q evaluated at the adapted parameters."""

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        adapted = detach(
            sgd_adapt(self.loss, detach(params), sx, sy, self.inner_lr, self.inner_steps, first_order=True)
        )
        g, post = grad(lambda p: self.measure_query(p, sx, qx, qy), has_aux=True)(adapted)
        return g, {**post, **self.pre_metrics(params, qx, qy, sx)}


register(AlgorithmEntry("maml", MAMLConfig, MAML.from_section))
register(AlgorithmEntry("fomaml", MAMLConfig, FOMAML.from_section))
