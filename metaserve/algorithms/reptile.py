"""Reptile (Nichol, Achiam & Schulman 2018, Algorithm 2, batched version).

Each task's contribution is the displacement of k plain SGD steps on its data,
phi_i - theta; the outer step moves toward the adapted parameters:
theta <- theta + epsilon * mean_i (phi_i - theta).
With `outer.optimizer: adam` the mean displacement is fed to Adam as the negative gradient, the
variant used in the paper's few-shot experiments.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from metaserve.algorithms.base import Metrics
from metaserve.algorithms.inner import InnerLoopLearner, InnerLoopSection, sgd_adapt
from metaserve.algorithms.params import Params, detach, subtract
from metaserve.registry import AlgorithmEntry, register


class ReptileConfig(InnerLoopSection):
    """reptile: k SGD steps per task, the outer step along the mean displacement."""

    name: Literal["reptile"] = "reptile"


class Reptile(InnerLoopLearner):
    """Contribution = phi - theta after k SGD steps; outer step theta += epsilon * mean."""

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        theta = detach(params)
        # Reptile adapts on the support set; the query set only serves the reported metrics.
        phi = sgd_adapt(self.loss, theta, sx, sy, self.inner_lr, self.inner_steps, first_order=True)
        return detach(subtract(phi, theta)), self.before_after(theta, phi, qx, qy, sx)


register(AlgorithmEntry("reptile", ReptileConfig, Reptile.from_section, contribution="delta"))
