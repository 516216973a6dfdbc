"""Meta-test evaluation: mean metric +- 95% CI over held-out episodes, and the adaptation curve.

The field's convention (Finn et al. 2017; Snell et al. 2017) is at least 600 test episodes and a 95%
confidence interval 1.96 * std / sqrt(n). The adaptation curve is the query loss (and accuracy)
after 0..k inner steps, averaged over the episodes.

`norm` says how the queries' batch norms are normalised (models/norm.py): "support" (the default,
non-transductive: with the support set's statistics, so each query is scored as if it came alone)
or "transductive" (with the query set's own statistics, the convention of MAML's and Reptile's
transductive figures). `ways` lets a metric learner meta-test on more or fewer classes than it was
trained with, and restricts a fixed head's logits to the first `ways` classes.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import vmap

from metaserve.algorithms.base import Algorithm
from metaserve.models.functional import Params
from metaserve.config import ImageTaskConfig
from metaserve.inputs import check_head
from metaserve.models.norm import check_mode
from metaserve.tasks.base import Stream, Task, stack_tasks
from metaserve.tasks.transform import image_transform


@dataclass
class EvalResult:
    """Summary of a meta-test: `metric` is 'acc' (classification) or 'mse' (regression)."""

    metric: str
    mean: float
    ci95: float
    episodes: int
    curve: list[dict[str, float]] = field(default_factory=list)  # one row per inner step 0..k
    record: dict = field(default_factory=dict)  # test.json's other fields (meta_test_record), where a caller adds them

    def __str__(self) -> str:
        value = f"{100 * self.mean:.2f}% +- {100 * self.ci95:.2f}%" if self.metric == "acc" else f"{self.mean:.4f} +- {self.ci95:.4f}"
        return f"meta-test {self.metric}: {value} over {self.episodes} episodes"


def ci95(values: Tensor) -> float:
    """Half-width of the normal 95% confidence interval of the mean."""
    n = values.numel()
    return 1.96 * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")


def adapt_to(algorithm: Algorithm, params: Params, sx: Tensor, sy: Tensor, steps: int | None,
             ways: int | None) -> Params:
    """`algorithm.adapt`, telling a head-less (metric) learner the support set's number of classes."""
    if algorithm.uses_head or ways is None:
        return algorithm.adapt(params, sx, sy, steps)
    return algorithm.adapt(params, sx, sy, steps, ways=ways)


def predict_with(algorithm: Algorithm, adapted: Params, sx: Tensor, qx: Tensor, norm: str,
                 ways: int | None = None) -> Tensor:
    """Query outputs, normalised per `norm`; a fixed head's logits cut to the first `ways` classes."""
    stats = algorithm.norm_stats(adapted, sx) if check_mode(norm) == "support" else None
    out = algorithm.predict(adapted, qx, stats)
    return out[..., :ways] if ways is not None and algorithm.uses_head else out


def episode_curve(algorithm: Algorithm, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, steps: int,
                  norm: str = "support", ways: int | None = None) -> Tensor:
    """[steps + 1, 2]: query (loss, accuracy or 0) after 0..steps inner steps of one episode."""
    rows = []
    adapted = adapt_to(algorithm, params, sx, sy, 0, ways)
    for j in range(steps + 1):
        if j > 0:
            adapted = adapt_to(algorithm, adapted, sx, sy, 1, ways)
        out = predict_with(algorithm, adapted, sx, qx, norm, ways)
        loss, metrics = algorithm.score(out, qy)
        rows.append(torch.stack([loss.detach(), metrics.get("acc", torch.zeros_like(loss)).detach()]))
    return torch.stack(rows)


def evaluate(algorithm: Algorithm, params: Params, distribution, *, seed: int, episodes: int = 600, steps: int | None = None,
             stream: Stream = "test", space=None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, chunk: int = 100, norm: str = "support") -> EvalResult:
    """Adapt to `episodes` held-out tasks and report the final metric with its 95% CI (queries normalised by `norm`)."""
    check_mode(norm)
    steps = getattr(algorithm, "eval_inner_steps", 0) if steps is None else steps
    if not hasattr(algorithm, "inner_lr"):
        steps = 0  # metric learners adapt in closed form: one point on the curve
    curves = []
    for start in range(0, episodes, chunk):
        tasks = [distribution.sample(seed, 0, i, space, stream).to(device, dtype) for i in range(start, min(start + chunk, episodes))]
        curves.append(_curves(algorithm, params, tasks, steps, norm))
    curve = torch.cat(curves)  # [episodes, steps + 1, 2]
    classification = algorithm.kind == "classification"
    final = curve[:, -1, 1] if classification else curve[:, -1, 0]
    rows = [{"inner_step": j, "loss": float(curve[:, j, 0].mean()), **({"acc": float(curve[:, j, 1].mean())} if classification else {})}
            for j in range(steps + 1)]
    return EvalResult("acc" if classification else "mse", float(final.mean()), ci95(final), episodes, rows)


def task_ways(task: Task) -> int | None:
    """The number of classes of one classification task (labels 0..N-1), None for regression or a family draw."""
    y = task.support_y
    if y.is_floating_point() or y.dim() != 1 or y.numel() == 0:
        return None
    return int(y.max()) + 1


def check_ways(algorithm: Algorithm, ways: int | None) -> None:
    """ValueError when a fixed classifier head has fewer outputs than a task has classes."""
    if ways is not None:
        check_head(ways, algorithm.head_classes, type(algorithm).__name__)


def _curves(algorithm: Algorithm, params: Params, tasks: list[Task], steps: int, norm: str) -> Tensor:
    ways = task_ways(tasks[0])
    check_ways(algorithm, ways)

    def run(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return episode_curve(algorithm, params, sx, sy, qx, qy, steps, norm, ways)

    if algorithm.vectorize:
        b = stack_tasks(tasks)
        return vmap(run)(b.support_x, b.support_y, b.query_x, b.query_y)
    return torch.stack([run(t.support_x, t.support_y, t.query_x, t.query_y) for t in tasks])


def class_overlap(distribution, stream: Stream = "test") -> dict | None:
    """How many classes of `stream` are also meta-training classes (by class name), None without class pools.

    A meta-test figure over classes the model was trained on is a training-set figure: `evaluate`'s
    callers warn about it and record it in test.json.
    """
    images = getattr(distribution, "images", distribution)  # omniglot-families wraps a FewShotImages
    if not hasattr(images, "pool"):
        return None
    train, tested = set(images.pool("train").class_names), images.pool(stream).class_names
    shared = [name for name in tested if name in train]
    return {"stream": stream, "classes": len(tested), "training_classes": len(train), "shared": len(shared),
            "shared_examples": shared[:5]}


def warn_overlap(overlap: dict | None) -> None:
    """A warning when the evaluated classes include meta-training classes."""
    if overlap and overlap["shared"]:
        warnings.warn(f"{overlap['shared']} of the {overlap['classes']} evaluated ({overlap['stream']}) classes "
                      f"are also meta-training classes (e.g. {overlap['shared_examples'][:3]}): the figure is partly "
                      "a training-set figure; choose task.test sources/alphabets disjoint from task.train",
                      stacklevel=2)


def meta_test_record(config, distribution) -> dict:
    """What test.json records besides the figure: the batch-norm modes and the train/test class overlap (warned)."""
    overlap = class_overlap(distribution)
    warn_overlap(overlap)
    record = {"batch_norm": config.eval.batch_norm, "train_batch_norm": config.model.batch_norm,
              "class_overlap": overlap}
    if isinstance(config.task, ImageTaskConfig):
        record["transform"] = image_transform(config.task).describe()  # what MetaModel.preprocess applies
    return record
