"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?", ICLR 2020).

The parameters split into a body and a head, theta = (theta_b, theta_h). The inner loop adapts the head
only (section 4, "the ANIL algorithm"; in MAML's notation, Finn et al. 2017 eq. 1):

    theta_h' = theta_h - alpha * grad_{theta_h} L_S(theta_b, theta_h)        (iterated k times)

and the meta-gradient is grad_theta L_Q(theta_b, theta_h') in both parts: the body is meta-learned
through the head's inner steps (`anil`, second order; MAML's eq. 2 with the body frozen in the inner
loop). `anil-1st` treats the inner gradients as constants (the FOMAML approximation):
the contribution is grad L_Q at (theta_b, theta_h').

The head is found by name from the model: the parameters of the last module, in registration order,
that owns parameters itself, which must be a linear layer (conv4's `head.*`, the MLP's last
`<index>.weight/bias`). `head_parameter_names` says which names those are.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.func import grad

from metaserve.algorithms.base import Metrics
from metaserve.algorithms.inner import InnerLoopLearner, InnerLoopSection, sgd_adapt
from metaserve.algorithms.params import Params, detach
from metaserve.registry import AlgorithmEntry, register


def head_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the head's parameters: those of the last module that owns parameters directly.

    conv4 registers its classifier `head` after `features`, and an MLP ends on its output layer, so the
    last such module is the final linear layer; anything else is refused rather than guessed.
    """
    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners or not isinstance(owners[-1][1], nn.Linear):
        last = owners[-1][0] if owners else None
        raise ValueError(
            f"ANIL adapts the model's final linear layer, but the last module with parameters is "
            f"{last!r} ({type(owners[-1][1]).__name__ if owners else 'none'}): use model mlp or conv4"
        )
    name = owners[-1][0]
    return tuple(f"{name}.{p}" if name else p for p, _ in owners[-1][1].named_parameters(recurse=False))


class ANILConfig(InnerLoopSection):
    """anil (second order through the head's inner steps) or anil-1st (first order)."""

    name: Literal["anil", "anil-1st"] = "anil"


class ANIL(InnerLoopLearner):
    """Inner loop on the head only; the meta-gradient reaches the body through the adapted head."""

    first_order = False

    def __init__(self, model: nn.Module, kind: str, **keywords):
        super().__init__(model, kind, **keywords)
        self.head_names = head_parameter_names(model)

    def split(self, params: Params) -> tuple[Params, Params]:
        """(body, head) parameter dicts."""
        head = {k: params[k] for k in self.head_names}
        return {k: v for k, v in params.items() if k not in head}, head

    def adapted(self, params: Params, x: Tensor, y: Tensor, steps: int, first_order: bool) -> Params:
        """The body unchanged and the head after `steps` SGD steps on L_S(body, head)."""
        body, head = self.split(params)
        head = sgd_adapt(
            lambda h, hx, hy: self.loss({**body, **h}, hx, hy),
            head,
            x,
            y,
            self.inner_lr,
            steps,
            first_order=first_order,
        )
        return {k: head.get(k, v) for k, v in params.items()}  # the order of `params`

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        def query_loss_after_adaptation(p: Params) -> tuple[Tensor, Metrics]:
            return self.measure(self.adapted(p, sx, sy, self.inner_steps, self.first_order), qx, qy)

        g, post = grad(query_loss_after_adaptation, has_aux=True)(params)
        return g, {**post, **self.pre_metrics(params, qx, qy)}

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return detach(self.adapted(detach(params), x, y, steps, first_order=True))


class ANIL1st(ANIL):
    """First-order ANIL: the head's inner gradients are constants."""

    first_order = True


register(AlgorithmEntry("anil", ANILConfig, ANIL.from_section))
register(AlgorithmEntry("anil-1st", ANILConfig, ANIL1st.from_section))
