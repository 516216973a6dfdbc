"""N-way K-shot image classification tasks (Omniglot, image folders such as mini-ImageNet).

A task picks `ways` distinct classes of a split and `shots + query` distinct images of each; labels
0..ways-1 follow the random class order. Everything is drawn from `task_rng(seed, stream, step,
index)`, so any process holding the same decoded pool regenerates the same tensors.
With `rotations=True` (the Omniglot protocol of Santoro et al. 2016 / Finn et al. 2017) every class
also appears rotated by 90, 180 and 270 degrees, each rotation counting as a new class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metaserve.tasks.base import STREAM_IDS, Stream, Task, task_rng

ROTATIONS = 4  # class id c * 4 + r is class c rotated by r * 90 degrees


@dataclass(frozen=True)
class ImageSpace:
    """Task-space parameters of few-shot classification (what a curriculum teacher may move)."""

    ways: int = 5
    shots: int = 1
    query: int = 15

    def __post_init__(self) -> None:
        for name in ("ways", "shots", "query"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"task space {name}={value!r} is not allowed: need an integer >= 1")


class ClassPool:
    """The decoded images of one split, grouped by class.

    `images` is uint8 [n_images, H, W, C]; class i owns rows offsets[i]:offsets[i+1] (image-folder
    classes may hold different numbers of images).
    """

    def __init__(self, images: np.ndarray, offsets: Sequence[int] | np.ndarray, class_names: list[str]):
        offsets = np.asarray(offsets, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"pool images must be uint8 [n, H, W, C], got {images.dtype} {list(images.shape)}")
        if len(offsets) != len(class_names) + 1 or offsets[0] != 0 or offsets[-1] != len(images):
            raise ValueError(f"pool offsets must run from 0 to {len(images)} with one entry per class plus one")
        if np.any(np.diff(offsets) < 0):
            raise ValueError("pool offsets must be non-decreasing")
        self.images = images
        self.offsets = offsets
        self.class_names = list(class_names)

    @classmethod
    def from_classes(cls, class_names: list[str], per_class: list[np.ndarray]) -> ClassPool:
        """Concatenate per-class arrays [n_i, H, W, C] into one pool."""
        if not per_class:
            raise ValueError("cannot build an image pool with no classes")
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in per_class])])
        return cls(np.concatenate(per_class, axis=0), offsets, class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> np.ndarray:
        """Images per class, [num_classes]."""
        return np.diff(self.offsets)

    @property
    def min_images_per_class(self) -> int:
        return int(self.counts.min()) if self.num_classes else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the layout of the task tensors."""
        _, h, w, c = self.images.shape
        return c, h, w

    def class_images(self, i: int) -> np.ndarray:
        """The images of class i, uint8 [n_i, H, W, C] (a view, not a copy)."""
        return self.images[self.offsets[i] : self.offsets[i + 1]]


class FewShotImages:
    """N-way K-shot tasks over per-stream class pools ("train", "val", "test").

    A missing "val" pool falls back to "train": the val stream of `task_rng` already draws other tasks.
    """

    kind = "classification"

    def __init__(self, pools: dict[str, ClassPool], space: ImageSpace, rotations: bool):
        unknown = sorted(set(pools) - set(STREAM_IDS))
        if unknown or "train" not in pools:
            raise ValueError(
                f"pools must include 'train' and only name streams {sorted(STREAM_IDS)}, got {sorted(pools)}"
            )
        self.pools = dict(pools)
        self.rotations = bool(rotations)
        self.check_space(space)
        self.space = space

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every task image."""
        return self.pools["train"].image_shape

    def num_classes(self, stream: Stream) -> int:
        """Classes a task of `stream` chooses from (x4 with rotations)."""
        return self.pool(stream).num_classes * (ROTATIONS if self.rotations else 1)

    def pool(self, stream: Stream) -> ClassPool:
        """The pool that tasks of `stream` draw from."""
        if stream == "val" and "val" not in self.pools:
            return self.pools["train"]
        if stream not in self.pools:
            raise ValueError(f"stream={stream!r} has no split: splits given are {sorted(self.pools)}")
        return self.pools[stream]

    def check_space(self, space: ImageSpace) -> None:
        """Raise ValueError when some split cannot supply tasks of `space`."""
        for name, pool in self.pools.items():
            if pool.num_classes == 0:
                raise ValueError(f"split {name!r} is empty: it has no classes")
            n = self.num_classes(name)
            if space.ways > n:
                rot = f" ({pool.num_classes} x {ROTATIONS} rotations)" if self.rotations else ""
                raise ValueError(f"ways={space.ways} but split {name!r} has only {n} classes{rot}")
            need, have = space.shots + space.query, pool.min_images_per_class
            if need > have:
                smallest = pool.class_names[int(np.argmin(pool.counts))]
                raise ValueError(
                    f"shots+query={need} (shots={space.shots}, query={space.query}) but split {name!r} "
                    f"has only {have} images in its smallest class {smallest!r}"
                )

    def sample(
        self, seed: int, step: int, index: int, space: ImageSpace | None = None, stream: Stream = "train"
    ) -> Task:
        """Regenerate task `index` of meta-step `step`; a pure function of the arguments."""
        if space is not None and space != self.space:
            self.check_space(space)
        space = space or self.space
        rng = task_rng(seed, stream, step, index)
        classes = rng.choice(self.num_classes(stream), size=space.ways, replace=False)
        return self.episode(rng, stream, classes, space)

    def episode(
        self, rng: np.random.Generator, stream: Stream, classes: Sequence[int] | np.ndarray, space: ImageSpace
    ) -> Task:
        """The task over `classes` (ids < num_classes(stream); label i is classes[i]), its images drawn with `rng`."""
        pool = self.pool(stream)
        per_class = [self._draw(rng, pool, int(c), space.shots + space.query) for c in classes]
        images = np.stack(per_class)  # [ways, shots + query, H, W, C]
        support = to_tensor(images[:, : space.shots])
        query = to_tensor(images[:, space.shots :])
        labels = torch.arange(space.ways, dtype=torch.int64)
        return Task(support, labels.repeat_interleave(space.shots), query, labels.repeat_interleave(space.query))

    def _draw(self, rng: np.random.Generator, pool: ClassPool, cls: int, n: int) -> np.ndarray:
        """n distinct images of (possibly rotated) class `cls`, uint8 [n, H, W, C]."""
        base, rot = divmod(cls, ROTATIONS) if self.rotations else (cls, 0)
        images = pool.class_images(base)
        picked = images[rng.choice(len(images), size=n, replace=False)]
        return np.rot90(picked, k=rot, axes=(1, 2)) if rot else picked


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., n, H, W, C] -> float32 [... * n, C, H, W] in [0, 1] (v / 255): the model's input layout."""
    h, w, c = images.shape[-3:]
    x = images.reshape(-1, h, w, c).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0))
