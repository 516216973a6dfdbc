"""The input contract of `MetaModel.adapt` and `AdaptedModel.predict`: what they accept, and the errors otherwise.

Inputs may be tensors, numpy arrays or (nested) lists. Examples are stacked on dim 0 and must have
the model's example shape: [C, H, W] for an image model (a grayscale [n, H, W] stack gets its channel
axis), [features] for a regression MLP (a 1-D [n] is read as n one-feature examples when the MLP
takes one input). Class labels are integers 0..N-1 with every class present, or any labels listed
in `classes` (label i of the model is classes[i]); a gap or an unknown label is an error, never a
silent drop. Every error is one sentence naming the bad value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_tensor(value: Any, what: str) -> Tensor:
    """A tensor from a tensor, a numpy array or a (nested) list of numbers."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{what} must be a tensor, a numpy array or a list of numbers ({err})") from err
    raise TypeError(f"{what} must be a tensor, a numpy array or a list of numbers, got {type(value).__name__}")


def shape_text(example: tuple[int, ...], lead: str = "n") -> str:
    return "[" + ", ".join([lead, *map(str, example)]) + "]"


def examples(value: Any, example: tuple[int, ...], what: str, families: bool = False) -> Tensor:
    """`value` as [n, *example] (or [tasks, n, *example] with `families`), a ValueError stating the expected shape."""
    x = as_tensor(value, what)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{what} must hold real numbers, got dtype {x.dtype}")
    if x.dim() == 1 and example == (1,):
        x = x.unsqueeze(1)  # [n] -> [n, 1]: n one-feature examples
    elif len(example) == 3 and example[0] == 1 and x.dim() == 3 and tuple(x.shape[1:]) == example[1:]:
        x = x.unsqueeze(1)  # grayscale [n, H, W] -> [n, 1, H, W]
    ok = x.dim() == len(example) + 1 or (families and x.dim() == len(example) + 2)
    if not ok or tuple(x.shape[-len(example) :]) != example or x.shape[0] == 0:
        also = f" (or {shape_text(example, 'tasks, n')} for a family)" if families else ""
        raise ValueError(
            f"{what} has shape {list(x.shape)}, but this model takes {shape_text(example)}{also} with n >= 1"
        )
    return x


def targets(value: Any, n: int, what: str = "support_y") -> Tensor:
    """Regression targets for n examples: [n] or [n, 1] -> [n, 1] floats."""
    y = as_tensor(value, what)
    given = list(y.shape)
    if y.dim() == 1:
        y = y.unsqueeze(1)
    if tuple(y.shape) != (n, 1):
        raise ValueError(f"{what} has shape {given}, but {n} support examples need targets shaped [{n}] or [{n}, 1]")
    return y.to(torch.get_default_dtype()) if not y.is_floating_point() else y


def class_labels(
    value: Any, n: int, classes: Sequence[Hashable] | None = None, what: str = "support_y"
) -> tuple[Tensor, int]:
    """Integer labels 0..N-1 for n support examples and N: labels must cover 0..N-1, or be mapped by `classes`."""
    if classes is not None:
        return _mapped(value, n, list(classes), what)
    y = as_tensor(value, what)
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1 or y.numel() != n:
        raise ValueError(
            f"{what} must be {n} integer class labels (shape [{n}]), got {y.dtype} of shape "
            f"{list(y.shape)}; to use other labels (e.g. names) pass classes=[...]"
        )
    present = sorted(set(y.tolist()))
    ways = present[-1] + 1
    if present[0] < 0 or len(present) != ways:
        missing = sorted(set(range(max(ways, 0))) - set(present))[:5]
        why = "negative labels" if present[0] < 0 else f"missing {missing}"
        raise ValueError(
            f"{what} has labels {present[:10]}{'...' if len(present) > 10 else ''}, but labels must be "
            f"0..N-1 with every class present ({why}); pass classes=[...] to map other labels"
        )
    return y.to(torch.int64), ways


def _mapped(value: Any, n: int, classes: list[Hashable], what: str) -> tuple[Tensor, int]:
    """Labels looked up in `classes`: every label must be listed and every listed class must have an example."""
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"classes={classes!r} must list distinct class labels, at least one")
    raw = value.tolist() if isinstance(value, (Tensor, np.ndarray)) else list(value)
    if len(raw) != n:
        raise ValueError(f"{what} has {len(raw)} labels but there are {n} support examples")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [label for label in raw if label not in index]
    if unknown:
        raise ValueError(f"{what} has labels {sorted(set(map(str, unknown)))[:5]} that are not in classes={classes!r}")
    empty = [c for c in classes if c not in set(raw)]
    if empty:
        raise ValueError(f"classes {empty[:5]} have no support example: every class in classes={classes!r} needs one")
    return torch.tensor([index[label] for label in raw], dtype=torch.int64), len(classes)


def check_head(ways: int, head: int | None, name: str) -> None:
    """A fixed classifier head takes at most its number of outputs: ValueError naming both numbers."""
    if head is not None and ways > head:
        raise ValueError(
            f"the support set has {ways} classes but this {name} model's classifier head has {head} "
            f"outputs, so it can classify at most {head} classes (metric learners such as protonet take "
            "any number)"
        )
