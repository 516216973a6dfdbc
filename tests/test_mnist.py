"""The MNIST task on small IDX files written here (the format by hand: magic, big-endian sizes, bytes).

Every generated image carries its identity in two pixels: [0, 0] = 20 * digit + index within the digit
and [0, 1] = 1 for the train files, 2 for the t10k files, so a task's images can be traced back.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.runtime.loop import train_loop
from metaserve.tasks import make_distribution
from metaserve.tasks.images import ImageSpace
from metaserve.tasks.mnist import load_mnist

PER_DIGIT = {"train": 6, "t10k": 5}


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: bytes 0, 0, 0x08 (unsigned byte), ndim; one big-endian uint32 per dimension; the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_split(root: Path, prefix: str, split_id: int, rng: np.random.Generator) -> None:
    labels = np.repeat(np.arange(10), PER_DIGIT[prefix])
    rng.shuffle(labels)  # files interleave digits, as the official ones do
    images = rng.integers(0, 256, (len(labels), 28, 28))
    seen = np.zeros(10, dtype=int)
    for row, digit in enumerate(labels):
        images[row, 0, 0], images[row, 0, 1] = 20 * digit + seen[digit], split_id
        seen[digit] += 1
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    write_split(root, "train", 1, rng)
    write_split(root, "t10k", 2, rng)
    return root


def identity(x: torch.Tensor) -> list[tuple[int, int, int]]:
    """(digit, index within digit, split id) of each image of a [n, 1, 28, 28] batch in [0, 1]."""
    code = (x[:, 0, 0, :2] * 255).round().long()
    return [(int(a) // 20, int(a) % 20, int(b)) for a, b in code]


def test_the_sampler_yields_n_way_k_shot_tasks_of_relabelled_digits(mnist_root):
    task_section = {"name": "mnist", "root": str(mnist_root), "ways": 4, "shots": 2, "query": 3}
    dist = make_distribution(as_config({"task": task_section, "model": {"name": "conv4"}}).task)
    mappings = []
    for index in range(12):
        task = dist.sample(7, 0, index)
        assert task.support_x.shape == (8, 1, 28, 28) and task.query_x.shape == (12, 1, 28, 28)
        assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert task.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        ids = identity(task.support_x) + identity(task.query_x)
        labels = task.support_y.tolist() + task.query_y.tolist()
        digit_of = {}
        for (digit, _, split), label in zip(ids, labels):
            assert split == 1  # the train stream reads the train files
            assert digit_of.setdefault(label, digit) == digit  # one digit per label within a task
        assert len(set(digit_of.values())) == 4  # four distinct digits
        assert len(set(ids)) == len(ids)  # support and query images are distinct
        mappings.append(tuple(digit_of[i] for i in range(4)))
    # relabelling: label 0 stands for different digits in different tasks, and no two tasks agree often
    assert len({m[0] for m in mappings}) >= 4 and len(set(mappings)) >= 10
    test_task = dist.sample(7, 0, 0, stream="test")
    assert {split for _, _, split in identity(test_task.query_x)} == {2}  # the test stream reads t10k
    assert dist.sample(7, 0, 3).support_x.equal(dist.sample(7, 0, 3).support_x)  # a pure function of its arguments
    two_way = dist.sample(7, 0, 0, space=ImageSpace(ways=2, shots=1, query=1))  # what a curriculum teacher moves
    assert two_way.support_y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="shots\\+query=6 .* split 'test' has only 5 images"):
        dist.sample(7, 0, 0, space=ImageSpace(ways=2, shots=3, query=3))


def test_pools_group_images_by_digit_in_file_order(mnist_root):
    pool = load_mnist(mnist_root, "test")
    assert pool.class_names == [str(d) for d in range(10)] and pool.counts.tolist() == [5] * 10
    for d in range(10):
        codes = pool.class_images(d)[:, 0, 0, 0].tolist()
        assert codes == [20 * d + i for i in range(5)]


def test_maml_trains_a_few_steps_on_mnist_with_a_curriculum_moving_the_ways(mnist_root, tmp_path):
    config = as_config(
        {
            "name": "mnist-maml",
            "seed": 1,
            "output_dir": str(tmp_path),
            "task": {"name": "mnist", "root": str(mnist_root), "ways": 3, "shots": 1, "query": 2},
            "model": {"name": "conv4", "hidden": 4},
            "algorithm": {"name": "maml", "inner_lr": 0.1},
            "train": {
                "steps": 4,
                "meta_batch": 2,
                "log_every": 2,
                "checkpoint_every": 2,
                "val_tasks": 2,
                "dtype": "float64",
                "device": "cpu",
            },
            "eval": {"episodes": 4},
            "curriculum": {
                "teacher": "static",
                "every": 1,
                "val_tasks": 2,
                "stages": [{"ways": 2}, {"ways": 3}],
                "threshold": 100.0,
                "patience": 1,
            },
        }
    )
    rows: list[dict] = []
    result = train_loop(config, on_log=lambda row, ckpt: rows.append(row))
    assert len(rows) == 2 and all(np.isfinite(v) for row in rows for v in row.values())
    assert [row["omega_ways"] for row in rows] == [3, 3]  # easy stage 2-way, advanced past the threshold
    assert result.test is not None and result.test.metric == "acc" and 0.0 <= result.test.mean <= 1.0


def test_bad_files_and_config_values_are_named(mnist_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 0x0D, 3]) + b"\0" * 12)
    with pytest.raises(ValueError, match="is not an unsigned-byte IDX file: its header is 00000d03"):
        load_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match=r"\[2, 28, 28\] .* \[3\] do not pair up"):
        load_mnist(tmp_path, "train")
    empty, out = tmp_path / "empty", tmp_path / "runs"
    empty.mkdir()
    config = as_config(
        {"output_dir": str(out), "task": {"name": "mnist", "root": str(empty)}, "model": {"name": "conv4"}}
    )
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte.gz"):
        train_loop(config)
    assert not out.exists()  # refused before any run directory (or worker) exists
    for bad, message in [
        ({"ways": 11}, "task.ways=11 is not allowed for MNIST"),
        ({"rotations": False}, "task.rotations does not apply to task.name='mnist'"),
        ({"image_size": 32}, "MNIST images are 28x28 grayscale"),
    ]:
        with pytest.raises(ConfigError, match=message):
            as_config({"task": {"name": "mnist", "root": str(mnist_root), **bad}, "model": {"name": "conv4"}})
