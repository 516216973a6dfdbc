"""Few-shot image tasks: the Omniglot loader on the shared zips, its cache, the sampler, image folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaserve.config import ImageTaskConfig, SplitConfig
from metaserve.tasks import make_distribution
from metaserve.tasks.image_folder import load_image_folder
from metaserve.tasks.images import ClassPool, FewShotImages, ImageSpace
from metaserve.tasks.omniglot import load_omniglot

PROJECT = Path(__file__).resolve().parents[1]
OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
SMALL1, SMALL2 = "images_background_small1.zip", "images_background_small2.zip"
TEST_ALPHABETS = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]

needs_omniglot = pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot zips not found at {OMNIGLOT}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def pools(cache: Path) -> dict[str, ClassPool]:
    """The benchmark split, decoded once for the module (about a second)."""
    if not OMNIGLOT.is_dir():
        pytest.skip(f"Omniglot zips not found at {OMNIGLOT}")
    train = load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL1]), cache_dir=cache)
    test = load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL2], alphabets=TEST_ALPHABETS), cache_dir=cache)
    return {"train": train, "test": test}


def _alphabets(pool: ClassPool) -> set[str]:
    return {name.split("/")[0] for name in pool.class_names}


# --- Omniglot loader -------------------------------------------------------------------------------


@needs_omniglot
def test_shared_zips_have_the_documented_classes(cache: Path) -> None:
    small2 = load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL2]), cache_dir=cache)
    assert small2.num_classes == 156 and (small2.counts == 20).all()
    both = load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL1, SMALL2]), cache_dir=cache)
    assert both.num_classes == 242  # Greek and Latin, in both zips, count once


@needs_omniglot
def test_benchmark_split(pools: dict[str, ClassPool]) -> None:
    train, test = pools["train"], pools["test"]
    assert (train.num_classes, test.num_classes) == (136, 106)
    assert (train.counts == 20).all() and (test.counts == 20).all()
    assert _alphabets(test) == set(TEST_ALPHABETS) and not _alphabets(train) & _alphabets(test)
    assert train.images.shape == (136 * 20, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.class_names == sorted(train.class_names)
    assert 0.02 < train.images.mean() / 255 < 0.2  # bright strokes on a dark background


@needs_omniglot
def test_unknown_alphabet_lists_those_present(cache: Path) -> None:
    with pytest.raises(ValueError, match=r"\['Klingon'\].*present:.*Sanskrit"):
        load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL2], alphabets=["Sanskrit", "Klingon"]), cache_dir=cache)


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zip.*does not exist.*data root"):
        load_omniglot(tmp_path, SplitConfig(sources=["nowhere.zip"]), cache_dir=tmp_path)


def test_corrupt_zip_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all" * 100)
    with pytest.raises(ValueError, match=r"bad\.zip.*not a readable zip"):
        load_omniglot(tmp_path, SplitConfig(sources=["bad.zip"]), cache_dir=tmp_path / "cache")


def test_extracted_folder_with_a_top_level(tmp_path: Path) -> None:
    for alphabet, char in [("Greek", "character01"), ("Greek", "character02"), ("Latin", "character01")]:
        folder = tmp_path / "images_background" / alphabet / char
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("1", (105, 105), 1).save(folder / f"0001_{i:02d}.png")
    pool = load_omniglot(
        tmp_path, SplitConfig(sources=["images_background"], alphabets=["Greek"]), cache_dir=tmp_path / "c"
    )
    assert pool.class_names == ["Greek/character01", "Greek/character02"] and pool.images.max() == 0


# --- cache -----------------------------------------------------------------------------------------


@needs_omniglot
def test_second_load_hits_the_cache(pools: dict[str, ClassPool], cache: Path) -> None:
    start = time.perf_counter()
    again = load_omniglot(OMNIGLOT, SplitConfig(sources=[SMALL1]), cache_dir=cache)
    assert time.perf_counter() - start < 1.0
    assert np.array_equal(again.images, pools["train"].images) and again.class_names == pools["train"].class_names


@needs_omniglot
def test_corrupt_cache_is_rebuilt(pools: dict[str, ClassPool], cache: Path, tmp_path: Path) -> None:
    split = SplitConfig(sources=[SMALL2], alphabets=TEST_ALPHABETS)
    own = tmp_path / "cache"
    shutil.copytree(cache, own)  # corrupt a copy, so the other tests keep their cache
    for npy in own.glob("*.npy"):  # flip bytes in the middle of every cached array
        data = bytearray(npy.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\x07" * 64
        npy.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_omniglot(OMNIGLOT, split, cache_dir=own)
    assert np.array_equal(rebuilt.images, pools["test"].images)
    for npy in own.glob("*.npy"):  # a file that is not an array at all
        npy.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = load_omniglot(OMNIGLOT, split, cache_dir=own)
    assert np.array_equal(again.images, pools["test"].images)
    assert not list(own.glob("*.tmp")) and not list(own.glob(".*.tmp"))


# --- the sampler -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def omniglot(pools: dict[str, ClassPool]) -> FewShotImages:
    return FewShotImages(pools, ImageSpace(ways=5, shots=2, query=3), rotations=True)


def _image_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


@needs_omniglot
def test_task_shapes_and_labels(omniglot: FewShotImages) -> None:
    for stream in ("train", "val", "test"):
        task = omniglot.sample(seed=1, step=3, index=0, stream=stream)
        assert task.support_x.shape == (10, 1, 28, 28) and task.query_x.shape == (15, 1, 28, 28)
        assert task.support_x.dtype == torch.float32 and task.support_y.dtype == torch.int64
        assert task.support_x.min() >= 0.0 and task.support_x.max() <= 1.0
        assert torch.bincount(task.support_y).tolist() == [2] * 5
        assert torch.bincount(task.query_y).tolist() == [3] * 5
        assert not _image_keys(task.support_x) & _image_keys(task.query_x)  # disjoint drawings
    bigger = omniglot.sample(0, 0, 0, space=ImageSpace(ways=20, shots=5, query=15), stream="test")
    assert bigger.support_x.shape == (100, 1, 28, 28) and bigger.query_y.shape == (300,)


@needs_omniglot
def test_same_task_in_a_fresh_process(omniglot: FewShotImages, cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "task.pt"
    script = (
        "import sys, torch\n"
        "from metaserve.config import SplitConfig\n"
        "from metaserve.tasks.images import FewShotImages, ImageSpace\n"
        "from metaserve.tasks.omniglot import load_omniglot\n"
        f"root, cache = {str(OMNIGLOT)!r}, {str(cache)!r}\n"
        f"pools = {{'train': load_omniglot(root, SplitConfig(sources=[{SMALL1!r}]), cache_dir=cache)}}\n"
        "d = FewShotImages(pools, ImageSpace(ways=5, shots=2, query=3), rotations=True)\n"
        "t = d.sample(7, 11, 3)\n"
        f"torch.save([t.support_x, t.support_y, t.query_x, t.query_y], {str(out)!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=PROJECT, timeout=60)
    theirs = torch.load(out)
    ours = omniglot.sample(7, 11, 3)
    for a, b in zip(theirs, [ours.support_x, ours.support_y, ours.query_x, ours.query_y]):
        assert torch.equal(a, b)
    assert not torch.equal(omniglot.sample(7, 11, 4).support_x, ours.support_x)
    assert not torch.equal(omniglot.sample(7, 11, 3, stream="val").support_x, ours.support_x)


def test_rotation_is_a_new_class() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3 * 4, 6, 6, 1), dtype=np.uint8)
    pool = ClassPool(images, [0, 4, 8, 12], ["a", "b", "c"])
    dist = FewShotImages({"train": pool}, ImageSpace(ways=12, shots=1, query=3), rotations=True)
    task = dist.sample(0, 0, 0)
    originals = {k: pool.class_images(k // 4) for k in range(12)}
    for label in range(12):
        got = torch.cat([task.support_x[task.support_y == label], task.query_x[task.query_y == label]])
        got = (got.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # back to [n, H, W, C]
        matches = [
            k for k in range(12) if all(any(np.array_equal(g, np.rot90(o, k % 4)) for o in originals[k]) for g in got)
        ]
        assert len(matches) == 1  # each label is exactly one (class, rotation)


@needs_omniglot
def test_rotated_class_equals_rot90_on_the_pool(omniglot: FewShotImages, pools: dict[str, ClassPool]) -> None:
    pool = pools["train"]
    rng = np.random.default_rng(3)
    for cls in (0, 1, 2, 3, 4 * 57 + 2, 4 * 135 + 3):
        drawn = omniglot._draw(rng, pool, cls, 4)
        base = pool.class_images(cls // 4)
        for image in drawn:
            assert any(np.array_equal(image, np.rot90(b, k=cls % 4)) for b in base)
        if cls % 4:
            assert not any(np.array_equal(image, b) for image in drawn for b in base)


def _blank_pool(classes: int, per_class: int) -> ClassPool:
    images = np.zeros((classes * per_class, 4, 4, 1), np.uint8)
    return ClassPool(images, np.arange(0, classes * per_class + 1, per_class), [f"c{i}" for i in range(classes)])


def test_space_validation() -> None:
    pool = _blank_pool(24, 5)
    with pytest.raises(ValueError, match=r"ways=30 but split 'test' has only 24 classes"):
        FewShotImages({"train": _blank_pool(40, 5), "test": pool}, ImageSpace(30, 1, 1), rotations=False)
    with pytest.raises(ValueError, match=r"shots\+query=6 .* only 5 images"):
        FewShotImages({"train": pool}, ImageSpace(5, 3, 3), rotations=False)
    dist = FewShotImages({"train": pool}, ImageSpace(30, 1, 1), rotations=True)  # 96 classes with rotations
    with pytest.raises(ValueError, match=r"ways=100 but split 'train' has only 96 classes"):
        dist.sample(0, 0, 0, space=ImageSpace(100, 1, 1))
    with pytest.raises(ValueError, match=r"split 'train' is empty"):
        FewShotImages({"train": ClassPool(np.zeros((0, 4, 4, 1), np.uint8), [0], [])}, ImageSpace(), False)
    with pytest.raises(ValueError, match=r"ways=0"):
        ImageSpace(ways=0)


# --- image folders ---------------------------------------------------------------------------------


def _tree(root: Path, classes: int = 6, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "images" / f"n{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"n{c:02d}_{i}.png")
    rows = [f"n{c:02d}_{i}.png,n{c:02d}" for c in (1, 3, 4) for i in range(per_class)]
    (root / "train.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")


def test_image_folder_csv_and_shapes(tmp_path: Path) -> None:
    _tree(tmp_path)
    split = SplitConfig(sources=["images"], csv="train.csv")
    pool = load_image_folder(tmp_path, split, image_size=8, channels=3, cache_dir=tmp_path / "c")
    assert pool.class_names == ["n01", "n03", "n04"] and pool.images.shape == (12, 8, 8, 3)
    gray = load_image_folder(
        tmp_path, SplitConfig(sources=["images"]), image_size=8, channels=1, cache_dir=tmp_path / "c"
    )
    assert gray.num_classes == 6 and gray.image_shape == (1, 8, 8)
    dist = FewShotImages({"train": pool, "test": gray}, ImageSpace(ways=3, shots=1, query=2), rotations=False)
    task = dist.sample(0, 0, 0)
    assert task.support_x.shape == (3, 3, 8, 8) and task.query_x.shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match=r"ways=4 but split 'train' has only 3 classes"):
        FewShotImages({"train": pool}, ImageSpace(ways=4, shots=1, query=1), rotations=False)
    with pytest.raises(ValueError, match=r"shots\+query=5 .* only 4 images"):
        FewShotImages({"train": pool}, ImageSpace(ways=2, shots=2, query=3), rotations=False)


def test_image_folder_errors(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing.*does not exist"):
        load_image_folder(tmp_path / "missing", SplitConfig(sources=["images"]), 8, 3, cache_dir=tmp_path / "c")
    (tmp_path / "images" / "n02" / "broken.png").write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(ValueError, match=r"cannot decode image .*n02/broken\.png"):
        load_image_folder(tmp_path, SplitConfig(sources=["images"]), 8, 3, cache_dir=tmp_path / "c")
    (tmp_path / "bad.csv").write_text("filename,label\nx.png,n99\n")
    with pytest.raises(ValueError, match=r"no folder.*n99"):
        load_image_folder(tmp_path, SplitConfig(sources=["images"], csv="bad.csv"), 8, 3, cache_dir=tmp_path / "c")


# --- make_distribution -----------------------------------------------------------------------------


@needs_omniglot
def test_make_distribution_resolves_the_root_from_the_project(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cache)  # `../shared/data/omniglot` is not under the cache dir: found via the project root
    dist = make_distribution(ImageTaskConfig(cache_dir=str(cache), ways=20, shots=1, query=5))
    assert dist.kind == "classification" and dist.num_classes("test") == 106 * 4
    assert dist.sample(0, 0, 0, stream="test").query_x.shape == (100, 1, 28, 28)
