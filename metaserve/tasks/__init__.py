"""Task distributions: sinusoid regression and few-shot image classification, built from a config."""

from __future__ import annotations

from pathlib import Path

from metaserve.config import ImageTaskConfig, SinusoidTaskConfig
from metaserve.tasks.base import Task, TaskDistribution
from metaserve.tasks.families import AlphabetFamilies
from metaserve.tasks.image_folder import load_image_folder
from metaserve.tasks.images import ClassPool, FewShotImages, ImageSpace
from metaserve.tasks.mnist import load_mnist
from metaserve.tasks.omniglot import load_omniglot
from metaserve.tasks.sinusoid import Sinusoid, SinusoidFamilies, SinusoidSpace

__all__ = ["make_distribution", "Task", "TaskDistribution"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `metaserve` package


def make_distribution(cfg: SinusoidTaskConfig | ImageTaskConfig) -> TaskDistribution:
    """The task distribution a `task:` config section describes (image data is decoded or read from cache)."""
    if isinstance(cfg, SinusoidTaskConfig):
        return _sinusoid(cfg)
    if isinstance(cfg, ImageTaskConfig):
        return _images(cfg)
    raise TypeError(f"task config of type {type(cfg).__name__} is not a sinusoid or image task config")


def _sinusoid(cfg: SinusoidTaskConfig) -> Sinusoid:
    space = SinusoidSpace(amplitude=tuple(cfg.amplitude), phase=tuple(cfg.phase))
    if cfg.name == "sinusoid-families":
        return SinusoidFamilies(
            cfg.shots,
            cfg.query,
            tuple(cfg.x_range),
            space,
            oracle=cfg.oracle,
            tasks_per_family=cfg.tasks_per_family,
            goal_tasks=cfg.goal_tasks,
            unit=cfg.unit,
        )
    return Sinusoid(cfg.shots, cfg.query, tuple(cfg.x_range), space, oracle=cfg.oracle)


def resolve_root(root: str) -> Path:
    """A relative `task.root` is tried against the current directory, then against the project root."""
    path = Path(root).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = " or ".join(repr(str(c)) for c in candidates)
    raise FileNotFoundError(
        f"task.root={root!r} is not a folder: looked for {tried}; for Omniglot, "
        f"`metaserve data omniglot --dest DIR` downloads it, then --set task.root=DIR"
    )


def _images(cfg: ImageTaskConfig) -> FewShotImages | AlphabetFamilies:
    root = resolve_root(cfg.root)
    if cfg.name == "mnist":  # the official train / t10k files, digits relabelled per task (tasks/mnist.py)
        pools = {stream: load_mnist(root, stream) for stream in ("train", "test")}
        return FewShotImages(pools, ImageSpace(cfg.ways, cfg.shots, cfg.query), rotations=False)
    omniglot = cfg.name in ("omniglot", "omniglot-families")
    if omniglot:
        if cfg.channels != 1:
            raise ValueError(f"task.channels={cfg.channels} does not fit omniglot, whose images are grayscale: use 1")
        load = lambda split: load_omniglot(root, split, cfg.image_size, cfg.cache_dir)  # noqa: E731
    else:
        load = lambda split: load_image_folder(root, split, cfg.image_size, cfg.channels, cfg.cache_dir)  # noqa: E731
    splits = {"train": cfg.train, "test": cfg.test, **({"val": cfg.val} if cfg.val else {})}
    pools: dict[str, ClassPool] = {stream: load(split) for stream, split in splits.items()}
    rotations = cfg.rotations and omniglot
    images = FewShotImages(pools, ImageSpace(cfg.ways, cfg.shots, cfg.query), rotations)
    if cfg.name == "omniglot-families":
        return AlphabetFamilies(images, cfg.tasks_per_family, cfg.goal_tasks, cfg.unit)
    return images
