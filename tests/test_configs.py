"""Every shipped config (configs/*.yaml, configs/paper/ sinusoid and minimal Omniglot) trains stably for a few steps.

Each config runs as shipped except for a tiny budget (4 meta-steps of 2 tasks, conv4 with 8 channels,
local backend, CPU, no validation), so what is checked is the config's own algorithm, task and
step sizes. "Sensible" means every logged training loss is finite, positive and below a bound a
diverging run exceeds at once: for classification, 3 ln N (ln N is the cross-entropy of a uniform guess
over N classes; relation's MSE and siamese's BCE on scores in [0, 1] stay below it too); for sinusoid MSE,
50 (the targets' mean square is E[A^2]/2 <= 12.5 for A <= 5). A diverging setting (inner_lr 3 on
sinusoid-maml) logs losses of 1e4-1e7 and a non-finite update stops the run, so both fail here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from metaserve.api import as_config
from metaserve.runtime.loop import train_loop
from metaserve.store.metrics import read_metrics

from conftest import OMNIGLOT, ROOT

# MNIST configs need the official IDX files, not shipped here (tests/test_mnist.py trains on generated ones).
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("mnist-"))
PAPER = sorted(p for p in (ROOT / "configs" / "paper").glob("*.yaml") if not p.name.startswith("omniglot-full"))
TINY = [
    "train.steps=4",
    "train.meta_batch=2",
    "train.log_every=2",
    "train.checkpoint_every=4",
    "train.val_tasks=0",
    "train.device=cpu",
    "runtime.backend=local",
    "eval.episodes=2",
]


def _overrides(path: Path, tmp: Path) -> list[str]:
    text = path.read_text()
    extra = [f"output_dir={tmp / 'runs'}"]
    if "conv4" in text:
        extra += ["model.hidden=8", f"task.cache_dir={tmp / 'cache'}", f"task.root={OMNIGLOT}"]
    if "curriculum:" in text:
        extra += ["curriculum.val_tasks=2"]
    return TINY + extra


def _loss_bound(config) -> float:
    if config.task.name.startswith("sinusoid"):
        return 50.0
    return 3 * math.log(max(config.task.ways, 2))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")  # one decoded-image cache shared by every Omniglot case


@pytest.mark.parametrize("path", CONFIGS + PAPER, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_trains_a_few_steps_with_sensible_losses(path: Path, workdir: Path) -> None:
    if "conv4" in path.read_text() and not OMNIGLOT.is_dir():
        pytest.skip(f"Omniglot data not found at {OMNIGLOT}")
    config = as_config(path, _overrides(path, workdir))
    result = train_loop(config, final_eval=False, tensorboard=False)
    losses = read_metrics(result.run_dir)["loss"].tolist()
    bound = _loss_bound(config)
    assert len(losses) == 2, losses
    assert all(math.isfinite(x) and 0 < x < bound for x in losses), f"{path.name}: losses {losses}, bound {bound:.3g}"
