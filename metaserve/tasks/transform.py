"""The image transform of a run, as one public object: what the loaders apply and `MetaModel.preprocess` applies.

Every task image goes through `prepare_image` (PIL mode, Lanczos resize, inversion for Omniglot)
when it is decoded and cached, then `to_tensor` (uint8 HWC -> float32 CHW in [0, 1]) when a task is
drawn. `ImageTransform` is those two steps for one run's config, so an image file given to a
trained model is transformed exactly as its training images were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from metaserve.config import ImageTaskConfig
from metaserve.tasks.image_cache import prepare_image
from metaserve.tasks.images import to_tensor

OMNIGLOT = ("omniglot", "omniglot-families")
_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ImageTransform:
    """PIL `mode`, resize to `size` x `size` (Lanczos), `invert` (255 - v), then v / 255 as [n, C, H, W] float32."""

    size: int
    mode: str  # "L" (1 channel) or "RGB" (3)
    invert: bool

    def describe(self) -> dict[str, Any]:
        """The transform in words and numbers, and how to undo it (to look at a model input as an image)."""
        return {
            **asdict(self),
            "resample": "lanczos",
            "layout": "[n, C, H, W] float32",
            "scale": "v / 255",
            "inverse": f"uint8 = round(x * 255){'; v = 255 - uint8' if self.invert else ''}; HWC = x.permute(1, 2, 0)",
        }

    def __call__(self, images: Any) -> torch.Tensor:
        """[n, C, size, size] float32 from one image or a list of them: paths, PIL images or uint8 arrays.

        A uint8 array is one raw image, [H, W] or [H, W, C], or a stack [n, H, W, C]; arrays in any
        other type are refused (an already-transformed tensor goes to `adapt`/`predict` directly).
        """
        items = _items(images)
        if not items:
            raise ValueError("preprocess needs at least one image: got an empty list")
        return to_tensor(np.stack([self.one(item) for item in items]))

    def one(self, image: Any) -> np.ndarray:
        """One image as the loaders cache it: uint8 [size, size, C]."""
        if isinstance(image, (str, Path)):
            path = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"image file {str(path)!r} does not exist")
            try:
                with Image.open(path) as raw:
                    return prepare_image(raw, self.size, self.mode, self.invert)
            except OSError as err:
                raise ValueError(f"cannot decode image {str(path)!r}: {err}") from err
        if isinstance(image, Image.Image):
            return prepare_image(image, self.size, self.mode, self.invert)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
                raise ValueError(
                    f"an image array must be uint8 [H, W] or [H, W, C] with C in 1, 3, 4 (raw pixels), "
                    f"got {image.dtype} of shape {list(image.shape)}"
                )
            return prepare_image(
                Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image),
                self.size,
                self.mode,
                self.invert,
            )
        raise TypeError(f"cannot preprocess a {type(image).__name__}: give image paths, PIL images or uint8 arrays")


def _items(images: Any) -> Sequence[Any]:
    """A list of single images from one image, a list of them or a uint8 stack [n, H, W, C]."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def omniglot_transform(size: int) -> ImageTransform:
    """Omniglot's: grayscale, inverted so strokes are bright (the loader decodes with it)."""
    return ImageTransform(size, "L", invert=True)


def folder_transform(size: int, channels: int) -> ImageTransform:
    """An image folder's: grayscale or RGB by `channels`, not inverted (the loader decodes with it)."""
    return ImageTransform(size, _MODES[channels], invert=False)


def image_transform(task: ImageTaskConfig) -> ImageTransform:
    """The transform a run with this task config trains with."""
    if task.name in OMNIGLOT:
        return omniglot_transform(task.image_size)
    return folder_transform(task.image_size, task.channels)
