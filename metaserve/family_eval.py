"""The MALTML evaluation protocol (Devos & Dandi 2020): goal-task performance after 0..s finetuning steps.

On held-out family draws (the test stream): a family learner (maltml, maltml-2nd) meta-finetunes on
the family's L tasks to theta'_j; a learner that ignores families (maml, pretrain, the oracle) starts
from its meta-parameters. Then each takes s SGD finetuning steps on the goal task's K examples (its
own `adapt(..., steps=1)`), and the goal-task MSE (or accuracy) on the goal's evaluation examples is
recorded after every step. Reported: the mean +- 95% CI (1.96 std / sqrt(n)) over n >= 600 family draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaserve.algorithms.base import Algorithm, map_tasks
from metaserve.config import ImageTaskConfig, SinusoidTaskConfig
from metaserve.evaluation import ci95, episode_curve
from metaserve.experiment import Learner
from metaserve.models.functional import Params
from metaserve.tasks.base import Stream, Task, TaskDistribution
from metaserve.tasks.families import family_split, family_tasks, goal_tasks


@dataclass
class FamilyEvalResult:
    """Goal-task metric after 0..s finetuning steps: `metric` is 'mse' (regression) or 'acc'."""

    metric: str
    families: int
    curve: list[dict[str, float]] = field(default_factory=list)  # per step: finetune_step, mean, ci95, loss

    def __str__(self) -> str:
        fmt = (lambda v: f"{100 * v:.2f}%") if self.metric == "acc" else (lambda v: f"{v:.4f}")
        points = ", ".join(f"{r['finetune_step']}: {fmt(r['mean'])} +- {fmt(r['ci95'])}" for r in self.curve)
        return f"goal-task {self.metric} after finetuning steps over {self.families} families: {points}"


def family_task_config(task: SinusoidTaskConfig | ImageTaskConfig) -> SinusoidTaskConfig | ImageTaskConfig:
    """The same families with whole family draws as samples (what a baseline trained with unit='task' is
    evaluated on)."""
    if task.name not in ("sinusoid-families", "omniglot-families"):
        raise ValueError(f"task.name={task.name!r} has no families: use 'sinusoid-families' or 'omniglot-families'")
    return task.model_copy(update={"unit": "family"})


def split_of(task: SinusoidTaskConfig | ImageTaskConfig) -> int:
    """Where a task's K finetuning examples end in the family layout."""
    return family_split(task.shots, task.ways if isinstance(task, ImageTaskConfig) else 1)


def goal_curve(
    algorithm: Algorithm, params: Params, family: Task, split: int, steps: int, meta_finetune: bool
) -> Tensor:
    """[steps + 1, 2]: goal (loss, accuracy or 0) after 0..steps finetuning steps, mean over the family's goal tasks.

    `meta_finetune`: a family learner first meta-finetunes on the family's L tasks; any other starts from `params`.
    """
    start = algorithm.meta_finetune(params, family_tasks(family, split)) if meta_finetune else params
    goals = goal_tasks(family, split)
    curves = [
        episode_curve(
            algorithm, start, goals.support_x[g], goals.support_y[g], goals.query_x[g], goals.query_y[g], steps
        )
        for g in range(goals.support_x.shape[0])
    ]
    return torch.stack(curves).mean(0)


def evaluate_families(
    learner: Learner,
    params: Params,
    distribution: TaskDistribution,
    *,
    split: int,
    families: int = 600,
    steps: int = 10,
    stream: Stream = "test",
    seed: int | None = None,
    chunk: int = 100,
) -> FamilyEvalResult:
    """The protocol over `families` draws of `distribution` (which must return whole families)."""
    algorithm, seed = learner.algorithm, learner.config.seed if seed is None else seed
    family_learner = learner.config.entry.evaluation == "family"
    curves = []
    for start in range(0, families, chunk):
        batch = [
            distribution.sample(seed, 0, i, None, stream).to(learner.device, learner.dtype)
            for i in range(start, min(start + chunk, families))
        ]
        task_ndim = 4 if algorithm.kind == "classification" else 2  # one task's inputs: [n, C, H, W] or [n, features]
        if batch[0].support_x.dim() != task_ndim + 1:
            raise ValueError(
                "evaluate_families needs whole family draws: build the distribution with task.unit='family' "
                "(family_task_config)"
            )
        curves.append(
            map_tasks(
                lambda *f: goal_curve(algorithm, params, Task(*f), split, steps, family_learner),
                batch,
                algorithm.vectorize,
            )
        )
    curve = torch.cat(curves)  # [families, steps + 1, 2]
    column = 1 if algorithm.kind == "classification" else 0
    rows = [
        {
            "finetune_step": s,
            "mean": float(curve[:, s, column].mean()),
            "ci95": ci95(curve[:, s, column]),
            "loss": float(curve[:, s, 0].mean()),
        }
        for s in range(steps + 1)
    ]
    return FamilyEvalResult("acc" if column else "mse", families, rows)
