"""Task families (Devos & Dandi, "Model-Agnostic Learning to Meta-Learn", 2020): one family draw is one `Task`.

In the L-task K-shot setting a family draw holds L tasks to meta-finetune on and G goal tasks. Like a
task, a family draw is a pure function of (seed, stream, step, index, task space), so the runtime
regenerates families exactly as it regenerates tasks: workers get families, and nothing else changes.

Layout. Each task's K task-step (support) and Q meta-step (query) examples are concatenated along the
example axis; `split` (K, or N*K for N-way images) separates them again:

    support_x [L, split + rest, ...]   the family's L tasks: [:, :split] task step (alpha), [:, split:] meta step (beta)
    query_x   [G, split + rest, ...]   its goal tasks:       [:, :split] finetuning set (gamma),
                                                             [:, split:] evaluation set

so `Task.support_*` is everything a family learner adapts on and `Task.query_*` the goal tasks it is
judged on. `stack_tasks` and `vmap` over a meta-batch of families work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from metaserve.tasks.base import Stream, Task, task_rng
from metaserve.tasks.images import ROTATIONS, ClassPool, FewShotImages, ImageSpace

Unit = Literal["family", "task"]


def family_split(shots: int, ways: int = 1) -> int:
    """Where a task's task-step examples end on the example axis: K (regression) or N*K (N-way)."""
    return shots * ways


def pack_family(tasks: Sequence[Task], goals: Sequence[Task]) -> Task:
    """L tasks and G goal tasks -> one family Task (layout in the module docstring)."""

    def joined(ts: Sequence[Task], axis: str) -> Tensor:  # [len(ts), split + rest, ...]
        return torch.stack([torch.cat([getattr(t, f"support_{axis}"), getattr(t, f"query_{axis}")]) for t in ts])

    return Task(joined(tasks, "x"), joined(tasks, "y"), joined(goals, "x"), joined(goals, "y"))


def unpack(x: Tensor, y: Tensor, split: int) -> Task:
    """Tasks stacked on dim 0 with their examples joined on dim 1 -> Task of [n, split, ...] / [n, rest, ...]."""
    return Task(x[:, :split], y[:, :split], x[:, split:], y[:, split:])


def family_tasks(family: Task, split: int) -> Task:
    """The L meta-finetuning tasks, stacked: support [L, split, ...] (task step), query [L, rest, ...] (meta step)."""
    return unpack(family.support_x, family.support_y, split)


def goal_tasks(family: Task, split: int) -> Task:
    """The G goal tasks, stacked: support [G, split, ...] (finetuning set), query [G, rest, ...] (evaluation set)."""
    return unpack(family.query_x, family.query_y, split)


def alphabet_classes(pool: ClassPool) -> dict[str, list[int]]:
    """Class indices of each alphabet: Omniglot class names are '<alphabet>/<character>'."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(pool.class_names):
        alphabet, sep, _ = name.partition("/")
        if not sep:
            raise ValueError(
                f"class {name!r} is not named '<alphabet>/<character>': omniglot-families needs Omniglot classes"
            )
        groups.setdefault(alphabet, []).append(i)
    return groups


class AlphabetFamilies:
    """Omniglot families = alphabets: a family draw picks one alphabet, then L + G N-way tasks within it.

    With rotations, a rotated character is a new class of its alphabet. `unit='task'` returns one task
    of one alphabet per draw (what a learner that ignores families trains on).
    """

    kind = "classification"

    def __init__(self, images: FewShotImages, tasks_per_family: int, goal_tasks: int, unit: Unit = "family"):
        self.images = images
        self.tasks_per_family = tasks_per_family
        self.goal_tasks = goal_tasks
        self.unit = unit
        self.check_space(images.space)
        self.space = images.space

    def alphabets(self, stream: Stream) -> dict[str, list[int]]:
        """Class ids (as `FewShotImages.episode` takes them, rotations included) of each alphabet of a stream."""
        per = ROTATIONS if self.images.rotations else 1
        return {
            a: [c * per + r for c in cs for r in range(per)]
            for a, cs in alphabet_classes(self.images.pool(stream)).items()
        }

    def check_space(self, space: ImageSpace) -> None:
        """Raise ValueError naming an alphabet too small for `space.ways` (a family needs N classes of one alphabet)."""
        self.images.check_space(space)
        for stream in self.images.pools:
            for alphabet, classes in self.alphabets(stream).items():  # type: ignore[arg-type]
                if len(classes) < space.ways:
                    raise ValueError(
                        f"ways={space.ways} but alphabet {alphabet!r} of split {stream!r} has only "
                        f"{len(classes)} classes: omniglot-families draws every task from one alphabet"
                    )

    def sample(
        self, seed: int, step: int, index: int, space: ImageSpace | None = None, stream: Stream = "train"
    ) -> Task:
        """Family draw `index` of meta-step `step` (or one task of it with unit='task'); a pure function of the
        arguments."""
        if space is not None and space != self.space:
            self.check_space(space)
        space = space or self.space
        rng = task_rng(seed, stream, step, index)
        groups = self.alphabets(stream)
        classes = np.asarray(groups[sorted(groups)[rng.integers(len(groups))]])

        def draw() -> Task:
            return self.images.episode(rng, stream, rng.choice(classes, size=space.ways, replace=False), space)

        if self.unit == "task":
            return draw()
        tasks = [draw() for _ in range(self.tasks_per_family)]
        return pack_family(tasks, [draw() for _ in range(self.goal_tasks)])
