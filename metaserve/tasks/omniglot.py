"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) read in place from its official zips or folders.

Layout: `[<top>/]<Alphabet>/<character>/<drawer>_<NN>.png`, 105x105 one-bit drawings, black strokes
on white. A class is an (alphabet, character) pair; images are resized and inverted so strokes are
bright (255) on a dark background (0), the convention of Finn et al.'s MAML data pipeline.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

ClassKey = tuple[str, str]  # (alphabet, character)


def load_omniglot(
    root: str | Path, split: SplitConfig, image_size: int = 28, cache_dir: str | Path | None = None
) -> ClassPool:
    """The decoded pool of one split: sources under `root`, filtered to `split.alphabets` (None: all)."""
    root = Path(root).expanduser()
    sources = [resolve_source(root, s, "omniglot") for s in split.sources]
    alphabets = sorted(split.alphabets) if split.alphabets is not None else None
    key = cache_key(
        kind="omniglot", sources=[fingerprint(s) for s in sources], alphabets=alphabets, image_size=image_size
    )
    return load_or_build(
        cache_dir or default_cache_dir("omniglot"), key, lambda: _build(sources, split.alphabets, image_size)
    )


@dataclass
class _Source:
    """The PNG names of one zip or folder, and how to read one of them."""

    path: Path
    names: list[str]
    read: Callable[[str], bytes]


@contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.png"))
        yield _Source(path, names, lambda name: (path / name).read_bytes())
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"omniglot source {str(path)!r} is not a readable zip file ({err})") from err
    with archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(".png"))
        yield _Source(path, names, lambda name: _read_member(archive, path, name))


def _read_member(archive: zipfile.ZipFile, path: Path, name: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise ValueError(f"cannot read {name!r} from the zip file {str(path)!r} ({err}): the zip is corrupt") from err


def _group(source: _Source) -> dict[ClassKey, list[str]]:
    """PNG names by (alphabet, character); the depth allows one optional top-level folder."""
    groups: dict[ClassKey, list[str]] = {}
    for name in source.names:
        parts = name.split("/")
        if len(parts) not in (3, 4) or any(p.startswith((".", "__MACOSX")) for p in parts):
            continue
        groups.setdefault((parts[-3], parts[-2]), []).append(name)
    if not groups:
        raise ValueError(
            f"omniglot source {str(source.path)!r} holds no PNG in the layout [<top>/]<Alphabet>/<character>/<png>"
        )
    return groups


def _select(classes: dict[ClassKey, object], alphabets: list[str] | None) -> list[ClassKey]:
    """The sorted classes of the wanted alphabets; ValueError for an alphabet not present."""
    present = sorted({alphabet for alphabet, _ in classes})
    if alphabets is not None:
        missing = [a for a in alphabets if a not in present]
        if missing:
            raise ValueError(
                f"omniglot alphabets {missing} are not in the split's sources; alphabets present: {present}"
            )
    chosen = sorted(k for k in classes if alphabets is None or k[0] in alphabets)
    if not chosen:
        raise ValueError(f"omniglot split selects no classes: alphabets={alphabets} (present: {present})")
    return chosen


def _build(sources: list[Path], alphabets: list[str] | None, size: int) -> ClassPool:
    """Decode the chosen classes; a class found in several sources is taken from the first."""
    with ExitStack() as stack:
        classes: dict[ClassKey, tuple[_Source, list[str]]] = {}
        for path in sources:
            source = stack.enter_context(_open_source(path))
            for key, names in _group(source).items():
                classes.setdefault(key, (source, names))  # Greek and Latin stand in both shared zips
        keys = _select(classes, alphabets)
        per_class = [_decode_class(*classes[k], size) for k in keys]
    return ClassPool.from_classes([f"{a}/{c}" for a, c in keys], per_class)


def _decode_class(source: _Source, names: list[str], size: int) -> np.ndarray:
    """uint8 [n, size, size, 1], strokes bright."""
    from metaserve.tasks.transform import omniglot_transform  # the transform MetaModel.preprocess applies too

    t = omniglot_transform(size)
    return np.stack([decode_image(source.read(n), str(source.path / n), t.size, t.mode, t.invert) for n in names])
