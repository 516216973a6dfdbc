"""Meta-test evaluation: mean metric +- 95% CI over held-out episodes, and the adaptation curve.

The field's convention (Finn et al. 2017; Snell et al. 2017) is at least 600 test episodes and a 95%
confidence interval 1.96 * std / sqrt(n). The adaptation curve is the query loss (and accuracy)
after 0..k inner steps, averaged over the episodes.

`norm` says how the queries' batch norms are normalised (models/norm.py): "support" (non-transductive:
with the support set's statistics, so each query is scored as if it came alone) or "transductive"
(with the query set's own statistics, the convention of MAML's and Reptile's transductive figures);
by default the config's `eval.batch_norm`. A metric learner meta-tests on as many classes as the
support set has; a fixed head's logits are cut to those classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaserve.algorithms.base import Algorithm, map_tasks
from metaserve.config import ImageTaskConfig
from metaserve.experiment import Learner
from metaserve.inputs import check_head
from metaserve.models.functional import Params
from metaserve.models.norm import check_mode
from metaserve.tasks.base import Stream, Task, TaskDistribution
from metaserve.tasks.transform import image_transform


@dataclass
class EvalResult:
    """Summary of a meta-test: `metric` is 'acc' (classification) or 'mse' (regression)."""

    metric: str
    mean: float
    ci95: float
    episodes: int
    curve: list[dict[str, float]] = field(default_factory=list)  # one row per inner step 0..k
    curve_ci95: list[dict[str, float]] = field(default_factory=list)  # the 95% CI half-width of each curve value
    record: dict = field(default_factory=dict)  # test.json's other fields (meta_test_record), where a caller adds them

    def __str__(self) -> str:
        value = (
            f"{100 * self.mean:.2f}% +- {100 * self.ci95:.2f}%"
            if self.metric == "acc"
            else f"{self.mean:.4f} +- {self.ci95:.4f}"
        )
        return f"meta-test {self.metric}: {value} over {self.episodes} episodes"


def ci95(values: Tensor) -> float:
    """Half-width of the normal 95% confidence interval of the mean."""
    n = values.numel()
    return 1.96 * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")


def adapt_to(
    algorithm: Algorithm, params: Params, sx: Tensor, sy: Tensor, steps: int | None, ways: int | None
) -> Params:
    """`algorithm.adapt`, telling a head-less (metric) learner the support set's number of classes."""
    if algorithm.head_classes is not None or ways is None:
        return algorithm.adapt(params, sx, sy, steps)
    return algorithm.adapt(params, sx, sy, steps, ways=ways)


def predict_with(
    algorithm: Algorithm, adapted: Params, sx: Tensor, qx: Tensor, norm: str, ways: int | None = None
) -> Tensor:
    """Query outputs, normalised per `norm`; a fixed head's logits cut to the first `ways` classes."""
    stats = algorithm.norm_stats(adapted, sx) if check_mode(norm) == "support" else None
    out = algorithm.predict(adapted, qx, stats)
    return out[..., :ways] if ways is not None and algorithm.head_classes is not None else out


def episode_curve(
    algorithm: Algorithm,
    params: Params,
    sx: Tensor,
    sy: Tensor,
    qx: Tensor,
    qy: Tensor,
    steps: int,
    curve: bool = True,
    norm: str = "support",
    ways: int | None = None,
) -> Tensor:
    """[steps + 1, 2]: query (loss, accuracy or 0) after 0..steps inner steps of one episode; with
    `curve=False` only after the last one, [1, 2] (one query pass instead of steps + 1)."""
    rows = []
    adapted = adapt_to(algorithm, params, sx, sy, 0 if curve else steps, ways)
    for j in range(steps + 1 if curve else 1):
        if j > 0:
            adapted = adapt_to(algorithm, adapted, sx, sy, 1, ways)
        loss, metrics = algorithm.score(predict_with(algorithm, adapted, sx, qx, norm, ways), qy)
        rows.append(torch.stack([loss.detach(), metrics.get("acc", torch.zeros_like(loss)).detach()]))
    return torch.stack(rows)


def task_ways(task: Task) -> int | None:
    """The number of classes of one classification task (labels 0..N-1), None for regression or a family draw."""
    y = task.support_y
    if y.is_floating_point() or y.dim() != 1 or y.numel() == 0:
        return None
    return int(y.max()) + 1


def protocol_steps(learner: Learner, steps: int | None) -> int:
    """Inner steps at meta-test, as the registry entry's protocol says: an inner-loop learner takes
    `steps` (default: its `eval_inner_steps`); a closed-form (metric) or family learner none (a family
    learner's goal tasks after meta-finetuning; family_eval.py has the whole family protocol)."""
    if learner.config.entry.evaluation != "inner-loop":
        return 0
    return learner.algorithm.eval_inner_steps if steps is None else steps


def episode_curves(
    learner: Learner,
    params: Params,
    distribution: TaskDistribution,
    indices: Sequence[int],
    *,
    steps: int,
    stream: Stream = "test",
    space: object | None = None,
    seed: int | None = None,
    curve: bool = True,
    norm: str | None = None,
    chunk: int = 100,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """[len(indices), rows, 2]: `episode_curve` of held-out episodes `indices`, `chunk` at a time
    (`progress(done)` after each chunk). Episodes are pure functions of (seed, index), so any process
    (a Ray worker) computes the same rows."""
    algorithm, seed, idx = learner.algorithm, learner.config.seed if seed is None else seed, list(indices)
    norm = check_mode(norm or learner.config.eval.batch_norm)
    out = []
    for start in range(0, len(idx), chunk):
        tasks = [
            distribution.sample(seed, 0, i, space, stream).to(learner.device, learner.dtype)
            for i in idx[start : start + chunk]
        ]
        ways = task_ways(tasks[0])
        if ways is not None:
            check_head(ways, algorithm.head_classes, learner.config.algorithm.name)
        out.append(
            map_tasks(
                lambda *t: episode_curve(algorithm, params, *t, steps, curve, norm, ways), tasks, algorithm.vectorize
            )
        )
        if progress is not None:
            progress(min(start + chunk, len(idx)))
    return torch.cat(out)


def summarize(curves: Tensor, kind: str, steps: int) -> EvalResult:
    """The final metric +- 95% CI and the mean curve of per-episode curves [episodes, rows, 2]."""
    classification = kind == "classification"
    final = curves[:, -1, 1] if classification else curves[:, -1, 0]
    first = steps + 1 - curves.shape[1]  # 0 with the whole curve, `steps` with the final row only
    rows = [
        {
            "inner_step": first + j,
            "loss": float(curves[:, j, 0].mean()),
            **({"acc": float(curves[:, j, 1].mean())} if classification else {}),
        }
        for j in range(curves.shape[1])
    ]
    bands = [
        {
            "inner_step": first + j,
            "loss": ci95(curves[:, j, 0]),
            **({"acc": ci95(curves[:, j, 1])} if classification else {}),
        }
        for j in range(curves.shape[1])
    ]
    return EvalResult(
        "acc" if classification else "mse", float(final.mean()), ci95(final), curves.shape[0], rows, bands
    )


def evaluate(
    learner: Learner,
    params: Params,
    distribution: TaskDistribution,
    *,
    episodes: int = 600,
    steps: int | None = None,
    stream: Stream = "test",
    space: object | None = None,
    seed: int | None = None,
    curve: bool = True,
    norm: str | None = None,
    chunk: int = 100,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Adapt to `episodes` held-out tasks and report the final metric with its 95% CI (and the mean
    adaptation curve unless `curve=False`). The registry entry's protocol sets the steps (`protocol_steps`)."""
    steps = protocol_steps(learner, steps)
    curves = episode_curves(
        learner,
        params,
        distribution,
        range(episodes),
        steps=steps,
        stream=stream,
        space=space,
        seed=seed,
        curve=curve,
        norm=norm,
        chunk=chunk,
        progress=progress,
    )
    return summarize(curves, learner.algorithm.kind, steps)


def class_overlap(distribution: TaskDistribution, stream: Stream = "test") -> dict | None:
    """How many classes of `stream` are also meta-training classes (by class name), None without class pools.

    A meta-test figure over classes the model was trained on is a training-set figure: `evaluate`'s
    callers warn about it and record it in test.json.
    """
    images = getattr(distribution, "images", distribution)  # omniglot-families wraps a FewShotImages
    if not hasattr(images, "pool"):
        return None
    train, tested = set(images.pool("train").class_names), images.pool(stream).class_names
    shared = [name for name in tested if name in train]
    return {
        "stream": stream,
        "classes": len(tested),
        "training_classes": len(train),
        "shared": len(shared),
        "shared_examples": shared[:5],
    }


def warn_overlap(overlap: dict | None) -> None:
    """A warning when the evaluated classes include meta-training classes."""
    if overlap and overlap["shared"]:
        warnings.warn(
            f"{overlap['shared']} of the {overlap['classes']} evaluated ({overlap['stream']}) classes "
            f"are also meta-training classes (e.g. {overlap['shared_examples'][:3]}): the figure is partly "
            "a training-set figure; choose task.test sources/alphabets disjoint from task.train",
            stacklevel=2,
        )


def meta_test_record(config, distribution: TaskDistribution) -> dict:
    """What test.json records besides the figure: the batch-norm modes and the train/test class overlap (warned)."""
    overlap = class_overlap(distribution)
    warn_overlap(overlap)
    record = {
        "batch_norm": config.eval.batch_norm,
        "train_batch_norm": config.model.batch_norm,
        "class_overlap": overlap,
    }
    if isinstance(config.task, ImageTaskConfig):
        record["transform"] = image_transform(config.task).describe()  # what MetaModel.preprocess applies
    return record
