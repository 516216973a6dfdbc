"""Model-agnostic learning to meta-learn (Devos & Dandi 2020): meta-learn a family from L tasks, then its goal task.

The paper's Algorithm 1 (L-task K-shot), for a family F_j with tasks T_1..T_L and goal task T_g:
    phi_i     = theta - alpha grad L_{T_i}(theta)                  task step, on a task's K examples
    theta'_j  = theta - beta grad_theta mean_i L_{T_i}(phi_i)      family meta-step, on the Q further examples
    theta''_j = theta'_j - gamma grad L_{T_g}(theta'_j)            goal finetuning, on the goal's K examples
    theta    <- theta - eta grad_theta mean_j L_{T_g}(theta''_j)   outer step, on the goal's evaluation examples
`maltml-2nd` computes exactly this, differentiating through both levels (third-order terms included).

`maltml` is the paper's scalable first-order form: from theta take m first-order meta-steps on the
family's L tasks, FOMAML (theta <- theta - beta mean_i grad L_{T_i}(phi_i), phi_i held constant) or
Reptile (theta <- theta + beta mean_i (phi_i - theta)), giving theta'_j; the contribution is
theta'_j - theta and the outer step theta <- theta + eta mean_j (theta'_j - theta) (Reptile one level
up). Goal finetuning is not needed in training.

Means, not sums: Algorithm 1 sums over the L tasks and over the batch of families. A mean with
beta = L * beta_paper and eta = (families per batch) * eta_paper is the same update, and keeps the step
sizes independent of L and of `train.meta_batch` (the runtime averages the contributions).

A family arrives as one `Task` (layout: tasks/families.py): the L tasks in `support_*`, the goal
tasks in `query_*`, each task's K and Q examples joined at `split`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor, nn
from torch.func import grad, vmap

from metaserve.algorithms.base import Algorithm, Metrics, map_tasks, section_keywords
from metaserve.algorithms.inner import LossFn, sgd_adapt
from metaserve.algorithms.params import Params, add, detach, sgd_step, subtract
from metaserve.config import AlgorithmSection, PositiveFloat, PositiveInt, task_kind
from metaserve.models.norm import Stats
from metaserve.registry import AlgorithmEntry, register
from metaserve.tasks.base import Task
from metaserve.tasks.families import family_split, family_tasks, goal_tasks, unpack

TaskFn = Callable[[Params, Task], dict[str, Tensor]]


class MALTML2ndConfig(AlgorithmSection):
    """maltml-2nd: MALTML's Algorithm 1 with single steps, differentiated through both levels."""

    name: Literal["maltml-2nd"] = "maltml-2nd"
    task_lr: PositiveFloat = 0.01  # alpha: SGD on a task's K examples
    meta_lr: PositiveFloat = 0.01  # beta: meta-step over the family's L tasks (their Q examples)
    finetune_lr: PositiveFloat = 0.01  # gamma: SGD on the goal task's K examples
    finetune_steps: PositiveInt = 10  # goal finetuning steps at meta-test (training takes one)


class MALTMLConfig(MALTML2ndConfig):
    """maltml (first order): m meta-steps (fomaml or reptile) on each family's L tasks; contribution theta'_j -
    theta."""

    name: Literal["maltml"] = "maltml"  # type: ignore[assignment]
    meta_learner: Literal["fomaml", "reptile"] = "fomaml"  # the first-order meta-step taken on the family
    task_steps: PositiveInt = 1  # SGD steps per task inside a meta-step
    meta_steps: Annotated[int, Field(ge=2)] = 5  # m > 1 meta-steps per family (one would be a plain first-order step)


def task_mean(fn: TaskFn, params: Params, tasks: Task, vectorize: bool) -> dict[str, Tensor]:
    """mean_i fn(params, T_i) over tasks stacked on dim 0: vmapped, or a per-task loop."""
    out = map_tasks(lambda sx, sy, qx, qy: fn(params, Task(sx, sy, qx, qy)), tasks, vectorize)
    return {k: v.mean(0) for k, v in out.items()}


def fomaml_meta_step(
    loss: LossFn, theta: Params, tasks: Task, alpha: float, steps: int, beta: float, vectorize: bool
) -> Params:
    """theta - beta mean_i grad L_Q_i(phi_i), phi_i = `steps` SGD steps on S_i held constant (Finn et al. 2017, 5.2)."""

    def query_gradient(p: Params, t: Task) -> Params:
        phi = detach(sgd_adapt(loss, p, t.support_x, t.support_y, alpha, steps, first_order=True))
        return grad(loss)(phi, t.query_x, t.query_y)

    return sgd_step(theta, task_mean(query_gradient, theta, tasks, vectorize), beta)


def reptile_meta_step(
    loss: LossFn, theta: Params, tasks: Task, alpha: float, steps: int, beta: float, vectorize: bool
) -> Params:
    """theta + beta mean_i (phi_i - theta), phi_i = `steps` SGD steps on S_i (Nichol et al. 2018, Algorithm 2)."""

    def displacement(p: Params, t: Task) -> Params:
        return subtract(sgd_adapt(loss, p, t.support_x, t.support_y, alpha, steps, first_order=True), p)

    return add(theta, task_mean(displacement, theta, tasks, vectorize), beta)


def maml_meta_step(loss: LossFn, theta: Params, tasks: Task, alpha: float, beta: float, vectorize: bool) -> Params:
    """theta'_j = theta - beta grad_theta mean_i L_Q_i(theta - alpha grad L_S_i(theta)) (Algorithm 1),
    differentiable."""

    def meta_loss(p: Params) -> Tensor:
        def query_loss(q: Params, t: Task) -> dict[str, Tensor]:
            return {"loss": loss(sgd_adapt(loss, q, t.support_x, t.support_y, alpha, 1), t.query_x, t.query_y)}

        return task_mean(query_loss, p, tasks, vectorize)["loss"]

    return sgd_step(theta, grad(meta_loss)(theta), beta)


class FamilyLearner(Algorithm):
    """What maltml and maltml-2nd share: the family layout, `adapt` and the goal-task metrics.

    `adapt` on a family's L tasks (x of shape [L, split + rest, ...]) meta-finetunes them to theta'_j;
    on one task's examples it takes SGD finetuning steps (gamma). `predict` takes one task's inputs
    or several tasks' stacked on dim 0. These learners have no `inner_lr`, so the generic
    `evaluation.evaluate` (a run's val/test rows) reports the goal tasks after meta-finetuning and no
    finetuning; `family_eval.evaluate_families` gives the whole protocol, 0..s finetuning steps.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        split: int,
        task_lr: float,
        meta_lr: float,
        finetune_lr: float,
        finetune_steps: int,
        vectorize: bool = True,
    ):
        super().__init__(model, kind, vectorize)
        self.split = split  # K (or N*K): where a task's task-step examples end
        self.task_lr, self.meta_lr, self.finetune_lr = task_lr, meta_lr, finetune_lr  # alpha, beta, gamma
        self.finetune_steps = finetune_steps
        self.example_ndim = 4 if kind == "classification" else 2  # one task's inputs: [n, C, H, W] or [n, features]

    @classmethod
    def from_section(cls, cfg: MALTML2ndConfig, model: nn.Module, task: Any, vectorize: bool) -> FamilyLearner:
        """Built from its config section (the registry's constructor), with the family layout of `task`."""
        kind = task_kind(task)
        split = family_split(task.shots, task.ways if kind == "classification" else 1)
        return cls(model, kind, split=split, vectorize=vectorize, **section_keywords(cfg))

    def meta_finetune(self, params: Params, tasks: Task) -> Params:
        """theta'_j from theta and a family's L tasks (stacked, support = task step, query = meta step)."""
        raise NotImplementedError

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        params = detach(params)
        if x.dim() == self.example_ndim + 1:
            return detach(self.meta_finetune(params, unpack(x, y, self.split)))
        steps = self.finetune_steps if steps is None else steps
        return sgd_adapt(self.loss, params, x, y, self.finetune_lr, steps, first_order=True)

    def predict(self, adapted: Params, x: Tensor, stats: Stats | None = None) -> Tensor:
        if x.dim() == self.example_ndim + 1:
            return vmap(self.forward, in_dims=(None, 0))(adapted, x)  # per task: batch norm sees one task at a time
        return self.forward(adapted, x, stats)

    def norm_stats(self, adapted: Params, support_x: Tensor) -> Stats | None:
        """One task's support statistics; None for a family's stacked tasks (each goal task is normalised by itself)."""
        return None if support_x.dim() == self.example_ndim + 1 else super().norm_stats(adapted, support_x)

    def score(self, out: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        if self.kind == "classification":  # several tasks' logits [tasks, n, ways] -> rows
            out, y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        return super().score(out, y)

    def goal_metrics(self, params: Params, family: Task, gamma: float = 0.0) -> dict[str, Tensor]:
        """Mean goal-task metrics on the evaluation examples, after one finetuning step of size gamma (0: none)."""

        def one_goal(p: Params, t: Task) -> dict[str, Tensor]:
            adapted = sgd_adapt(self.loss, p, t.support_x, t.support_y, gamma, 1) if gamma else p
            loss, metrics = self.measure(adapted, t.query_x, t.query_y)
            return {**metrics, "objective": loss}

        return task_mean(one_goal, params, goal_tasks(family, self.split), self.vectorize)


class MALTML(FamilyLearner):
    """First-order maltml: contribution theta'_j - theta after m FOMAML or Reptile meta-steps on the family."""

    def __init__(self, model: nn.Module, kind: str, *, meta_learner: str, task_steps: int, meta_steps: int, **kwargs):
        super().__init__(model, kind, **kwargs)
        if meta_learner not in ("fomaml", "reptile"):
            raise ValueError(f"meta_learner={meta_learner!r} is not one of ['fomaml', 'reptile']")
        self.meta_step = fomaml_meta_step if meta_learner == "fomaml" else reptile_meta_step
        self.task_steps, self.meta_steps = task_steps, meta_steps  # k, m

    def meta_finetune(self, params: Params, tasks: Task) -> Params:
        theta = params
        for _ in range(self.meta_steps):
            theta = self.meta_step(self.loss, theta, tasks, self.task_lr, self.task_steps, self.meta_lr, self.vectorize)
        return theta

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        family, theta = Task(sx, sy, qx, qy), detach(params)
        theta_j = detach(self.meta_finetune(theta, family_tasks(family, self.split)))
        return subtract(theta_j, theta), _metrics(self.goal_metrics(theta_j, family), self.goal_metrics(theta, family))


class MALTML2nd(FamilyLearner):
    """Second-order maltml: contribution grad_theta L_{T_g}(theta''_j), through both levels of Algorithm 1."""

    def meta_finetune(self, params: Params, tasks: Task) -> Params:
        return maml_meta_step(self.loss, params, tasks, self.task_lr, self.meta_lr, self.vectorize)

    def objective(self, params: Params, family: Task) -> tuple[Tensor, dict[str, Tensor]]:
        """mean_g L_{T_g}(theta''_j(theta)) and the goal metrics after finetuning."""
        goal = self.goal_metrics(self.meta_finetune(params, family_tasks(family, self.split)), family, self.finetune_lr)
        return goal["objective"], goal

    def contribute(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Metrics]:
        family = Task(sx, sy, qx, qy)
        g, post = grad(self.objective, has_aux=True)(params, family)
        return g, _metrics(post, self.goal_metrics(detach(params), family))


def _metrics(post: dict[str, Tensor], pre: dict[str, Tensor]) -> Metrics:
    """Goal-task metrics after (plain names) and before (`_pre`) the family's adaptation."""
    keep = lambda m: {k: v.detach() for k, v in m.items() if k != "objective"}  # noqa: E731
    return {**keep(post), **{f"{k}_pre": v for k, v in keep(pre).items()}}


register(
    AlgorithmEntry(
        "maltml", MALTMLConfig, MALTML.from_section, contribution="delta", evaluation="family", learns_from="families"
    )
)
register(
    AlgorithmEntry("maltml-2nd", MALTML2ndConfig, MALTML2nd.from_section, evaluation="family", learns_from="families")
)
