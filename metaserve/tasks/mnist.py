"""MNIST (LeCun et al. 1998) read from the official IDX files, as N-way K-shot tasks with relabelled classes.

The folder `task.root` holds `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz` (or the same names without `.gz`). The
train split is the train files, the test split the t10k files; validation tasks come from the train
split on their own seed stream. A task draws `ways` of the 10 digits and labels them 0..ways-1 in a
random order (FewShotImages), so a label means a different digit in every task: the random relabelling
of the teacher paper (Shevchuk, "Teaching Your MAML"), whose task space omega is the number of classes,
1..10 (ImageSpace.ways), which the curriculum teachers move.

IDX format: a 4-byte magic (0, 0, type 0x08 = unsigned byte, number of dimensions), one big-endian
uint32 size per dimension, then the data in C order. Images are [n, 28, 28], labels [n].
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from metaserve.tasks.images import ClassPool

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array an IDX file holds (gzip'd when its name ends in .gz); ValueError if it is not one."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ValueError(f"cannot read the IDX file {str(path)!r} ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or raw[3] == 0:
        raise ValueError(
            f"{str(path)!r} is not an unsigned-byte IDX file: its header is {raw[:4].hex() or 'empty'}, "
            "expected 0000 08 <ndim>"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} declares shape {list(shape)} but holds {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_file(root: Path, stem: str) -> Path:
    """`root/stem.gz`, else `root/stem`; FileNotFoundError naming both when neither exists."""
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"task.root={str(root)!r} has no {stem}.gz (or {stem}): put the official MNIST IDX files there"
    )


def load_mnist(root: str | Path, split: str) -> ClassPool:
    """The pool of one split ('train' or 'test'): images uint8 [n, 28, 28, 1] grouped by digit 0..9."""
    root = Path(root).expanduser()
    images_path, labels_path = (find_file(root, stem) for stem in FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{str(images_path)!r} {list(images.shape)} and {str(labels_path)!r} {list(labels.shape)} "
            "do not pair up: need images [n, H, W] and labels [n]"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{str(labels_path)!r} holds label {int(labels.max())}: MNIST labels are digits 0..9")
    digits = sorted(int(d) for d in np.unique(labels))
    order = np.argsort(labels, kind="stable")  # images of each digit in file order
    per_class = np.split(images[order][..., None], np.cumsum(np.bincount(labels, minlength=10))[:-1])
    return ClassPool.from_classes([str(d) for d in digits], [per_class[d] for d in digits])
