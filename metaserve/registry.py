"""The algorithm registry: what each meta-learner is, written once, read by every other layer.

An `AlgorithmEntry` holds an algorithm's config section, its constructor, the model head it needs,
whether its contribution is a meta-gradient or a parameter delta, the metrics it reports and its
evaluation protocol. Config validation, model building, the learner loop, evaluation, family
evaluation and sweep validation all read it; nothing else lists algorithms. Each algorithm module
registers its own entries at import (`metaserve.algorithms` imports them all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

TaskKind = Literal["regression", "classification"]
Head = Literal["classifier", "embedding", "relation", "siamese", "matching", "lstm-meta", "mann", "metanet"]


@dataclass(frozen=True)
class AlgorithmEntry:
    """One algorithm, as the rest of the system sees it."""

    name: str
    config: type  # its config section: a `metaserve.config.AlgorithmSection` whose `name` admits `name`
    build: Callable[[Any, nn.Module, Any, bool], Any]  # (section, model, task section, vectorize) -> Algorithm
    head: Head = "classifier"  # what the model carries: a classifier head, the embedding only, or a metric head
    contribution: Literal["gradient", "delta"] = "gradient"  # descend on it, or move along it (Reptile-style)
    evaluation: Literal["inner-loop", "closed-form", "family"] = "inner-loop"  # how a meta-test adapts
    tasks: tuple[TaskKind, ...] = ("regression", "classification")
    learns_from: Literal["tasks", "families"] = "tasks"
    reports_pre: bool = True  # reports `<metric>_pre`: the query metrics before adaptation
    fixed_ways: bool = False  # built for task.ways classes: a curriculum may not move `ways`

    def metrics(self, kind: TaskKind) -> set[str]:
        """The per-task metrics one training step reports for a task of this kind."""
        base = {"loss", "acc"} if kind == "classification" else {"loss"}
        return base | ({f"{m}_pre" for m in base} if self.reports_pre else set())

    def eval_metrics(self, kind: TaskKind) -> set[str]:
        """The metrics a meta-validation row reports (`val_` prefixed by the learner loop)."""
        base = {"loss", "acc"} if kind == "classification" else {"loss"}
        return base | ({f"{m}_pre" for m in base} if self.evaluation != "closed-form" else set())


_ENTRIES: dict[str, AlgorithmEntry] = {}


def register(entry: AlgorithmEntry) -> AlgorithmEntry:
    """Add an algorithm (a name registered twice is an error, so two entries never disagree)."""
    if entry.name in _ENTRIES and _ENTRIES[entry.name] != entry:
        raise ValueError(f"algorithm {entry.name!r} is already registered")
    _ENTRIES[entry.name] = entry
    return entry


def names() -> list[str]:
    """Every registered algorithm name, sorted."""
    return sorted(_ENTRIES)


def entry(name: str) -> AlgorithmEntry:
    """The entry of `name`, or a KeyError that lists the known names."""
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"algorithm.name={name!r} is not one of: {', '.join(names())}") from None
