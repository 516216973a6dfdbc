"""Decoding and caching shared by the image loaders (Omniglot, image folders).

Decoding thousands of PNGs takes seconds; every process of a run (learner, workers, evaluation)
needs the same pool, so a decoded pool is stored once as `<key>.npy` plus `<key>.json` (class names,
offsets, a checksum). The key hashes the sources (resolved paths, sizes, mtimes) and every decoding
option, so a changed file or option never reads a stale pool. Files are written to a temporary name
and renamed, so a crash leaves either no cache or a whole one; an unreadable cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metaserve.config import cache_root
from metaserve.tasks.images import ClassPool

CACHE_VERSION = 1


def default_cache_dir(kind: str) -> Path:
    """`$METASERVE_CACHE/<kind>` if that variable is set, else `~/.cache/metaserve/<kind>`."""
    return cache_root() / kind


def resolve_source(root: Path, source: str, what: str) -> Path:
    """`source` relative to `root` (or absolute); FileNotFoundError saying where it was expected."""
    path = Path(source).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise FileNotFoundError(
            f"{what} source {str(path)!r} does not exist: each split source is expected under the data "
            f"root {str(root)!r} (task.root), or as an absolute path"
            + ("; `metaserve data omniglot --dest DIR` downloads the Omniglot zips" if what == "omniglot" else "")
        )
    return path.resolve()


def fingerprint(path: Path) -> list[Any]:
    """(path, size, mtime) of a file, or of every file below a folder: changes when the data does."""
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            files.append([os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns])
    return [str(path), files]


def cache_key(**parts: Any) -> str:
    """A stable hash of everything that determines a decoded pool."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare_image(image: Image.Image, size: int, mode: str, invert: bool = False) -> np.ndarray:
    """The pixel transform of every task image: PIL `mode` ("L" or "RGB"), Lanczos resize to size x size,
    optionally inverted (255 - v; Omniglot, so strokes are bright); uint8 [size, size, C].

    The one definition the loaders and `MetaModel.preprocess` share (tasks/transform.py).
    """
    array = np.asarray(image.convert(mode).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    array = 255 - array if invert else array
    return array.reshape(size, size, -1)


def decode_image(data: bytes, name: str, size: int, mode: str, invert: bool = False) -> np.ndarray:
    """Decode one image and `prepare_image` it: uint8 [size, size, C]; ValueError names the file."""
    try:
        with Image.open(io.BytesIO(data)) as raw:
            return prepare_image(raw, size, mode, invert)
    except Exception as err:  # PIL raises OSError, SyntaxError, zlib.error... for bad data
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__
        raise ValueError(f"cannot decode image {name!r}: {reason} (not an image PIL can read, or damaged)") from err


def load_or_build(cache_dir: str | Path, key: str, build: Callable[[], ClassPool]) -> ClassPool:
    """The cached pool for `key`, or `build()` stored under it."""
    cache_dir = Path(cache_dir).expanduser()
    pool = _read(cache_dir, key)
    if pool is None:
        pool = build()
        _write(cache_dir, key, pool)
    return pool


def _checksum(images: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(images).data)


def _read(cache_dir: Path, key: str) -> ClassPool | None:
    """The cached pool, or None when it is absent or does not check out (it is then rebuilt)."""
    meta_path, npy_path = cache_dir / f"{key}.json", cache_dir / f"{key}.npy"
    if not (meta_path.is_file() and npy_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(npy_path, allow_pickle=False)
        if meta["key"] != key or list(images.shape) != meta["shape"] or _checksum(images) != meta["crc32"]:
            raise ValueError("cache metadata does not match the array")
        return ClassPool(images, meta["offsets"], meta["class_names"])
    except Exception as err:  # any unreadable cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable image cache {npy_path} ({err}); rebuilding it", stacklevel=3)
        return None


def _write(cache_dir: Path, key: str, pool: ClassPool) -> None:
    """Store the pool atomically; a cache that cannot be written only costs a warning."""
    meta = {
        "key": key,
        "shape": list(pool.images.shape),
        "crc32": _checksum(pool.images),
        "offsets": pool.offsets.tolist(),
        "class_names": pool.class_names,
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # The array first, the metadata last: a reader needs both, so a crash in between is a miss.
        _atomic_write(cache_dir / f"{key}.npy", lambda f: np.save(f, pool.images, allow_pickle=False))
        _atomic_write(cache_dir / f"{key}.json", lambda f: f.write(json.dumps(meta).encode()))
    except OSError as err:
        warnings.warn(f"could not write the image cache in {cache_dir} ({err}); decoding again next time", stacklevel=3)


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
