"""The configs and sweep specs that ship with metaserve, and `copy_shipped` behind `metaserve init DIR`.

The top-level `configs/` and `tuning/` folders of the repository are the source. A built wheel carries
copies under `metaserve/_shipped/` (setup.py's build_py copies them at build time); an editable
install or a checkout reads the repository folders themselves. Sweep specs name their bases as
`../configs/<name>.yaml`, so the two folders keep working side by side wherever they are copied.
"""

from __future__ import annotations

import shutil
from pathlib import Path

KINDS = ("configs", "tuning")
PACKAGE = Path(__file__).resolve().parent


def shipped_dir(kind: str) -> Path:
    """The folder of shipped `configs` or `tuning` specs: the wheel's copy, else the checkout's."""
    if kind not in KINDS:
        raise ValueError(f"shipped kind {kind!r} is not one of {', '.join(KINDS)}")
    for candidate in (PACKAGE / "_shipped" / kind, PACKAGE.parent / kind):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(f"no shipped {kind}/ found next to {PACKAGE} (a broken install: reinstall metaserve)")


def copy_shipped(dest: str | Path) -> tuple[list[Path], list[Path]]:
    """Copy configs/ and tuning/ into `dest`; existing files are kept, never overwritten.

    Returns (copied, kept). Everything is checked before the first copy, so a bad `dest` changes nothing.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"init destination {str(dest)!r} is a file; give a folder (new or existing)")
    sources = [(src, dest / kind / src.name) for kind in KINDS for src in sorted(shipped_dir(kind).glob("*.yaml"))]
    copied, kept = [], []
    for src, target in sources:
        if target.exists():
            kept.append(target)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        copied.append(target)
    return copied, kept
