"""Any `root/<source>/<class>/<image>` tree as a few-shot split (e.g. mini-ImageNet, Vinyals et al. 2016).

Each split source is a folder of class folders. An optional CSV (the mini-ImageNet split files,
columns `filename,label`) names the split's classes in its `label` column and, when it has a
`filename` column, the only files to keep.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from metaserve.config import SplitConfig
from metaserve.tasks.image_cache import (
    cache_key,
    decode_image,
    default_cache_dir,
    fingerprint,
    load_or_build,
    resolve_source,
)
from metaserve.tasks.images import ClassPool

_MODES = {1: "L", 3: "RGB"}


def load_image_folder(
    root: str | Path, split: SplitConfig, image_size: int, channels: int, cache_dir: str | Path | None = None
) -> ClassPool:
    """The decoded pool of one split: class folders of `split.sources`, filtered by `split.csv`."""
    if channels not in _MODES:
        raise ValueError(f"channels={channels!r} is not allowed: use 1 (grayscale) or 3 (RGB)")
    root = Path(root).expanduser()
    sources = [resolve_source(root, s, "image-folder") for s in split.sources]
    for path in sources:
        if not path.is_dir():
            raise ValueError(f"image-folder source {str(path)!r} is not a folder: it must hold one folder per class")
    table = resolve_source(root, split.csv, "image-folder split CSV") if split.csv else None
    key = cache_key(
        kind="image-folder",
        sources=[fingerprint(s) for s in sources],
        csv=fingerprint(table) if table else None,
        image_size=image_size,
        channels=channels,
    )
    build = lambda: _build(sources, table, image_size, _MODES[channels])  # noqa: E731
    return load_or_build(cache_dir or default_cache_dir("image-folder"), key, build)


def _read_csv(path: Path) -> tuple[set[str], set[str] | None]:
    """(labels, filenames or None) of a split CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if "label" not in columns:
        raise ValueError(
            f"split CSV {str(path)!r} has no 'label' column (columns: {sorted(columns)}); expected filename,label"
        )
    files = {Path(r["filename"]).name for r in rows} if "filename" in columns else None
    return {r["label"] for r in rows}, files


def _class_dirs(sources: list[Path], labels: set[str] | None) -> list[tuple[str, Path]]:
    """(class name, folder) in source order, then name order; a name in several sources keeps the first."""
    found: dict[str, Path] = {}
    for source in sources:
        for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if labels is None or folder.name in labels:
                found.setdefault(folder.name, folder)
    if labels is not None and (missing := sorted(labels - set(found))):
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"the split CSV lists classes with no folder under {[str(s) for s in sources]}: {shown}")
    if not found:
        raise ValueError(f"image-folder split is empty: no class folders under {[str(s) for s in sources]}")
    return list(found.items())


def _image_files(folder: Path, files: set[str] | None) -> list[Path]:
    """The sorted image files of one class folder (any extension PIL registers)."""
    extensions = Image.registered_extensions()
    chosen = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in extensions
        and (files is None or p.name in files)
    )
    if not chosen:
        raise ValueError(f"class folder {str(folder)!r} holds no image files this split keeps")
    return chosen


def _build(sources: list[Path], table: Path | None, size: int, mode: str) -> ClassPool:
    labels, files = _read_csv(table) if table else (None, None)
    classes = _class_dirs(sources, labels)
    per_class = [
        np.stack([decode_image(p.read_bytes(), str(p), size, mode) for p in _image_files(folder, files)])
        for _, folder in classes
    ]
    return ClassPool.from_classes([name for name, _ in classes], per_class)
