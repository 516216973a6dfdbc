"""The algorithm registry is the one list of algorithms: every entry trains and reports what it declares,
and a new algorithm is a registry entry plus a `contribute`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from PIL import Image
from torch.func import functional_call, grad

from metaserve import registry
from metaserve.algorithms.base import Algorithm
from metaserve.api import as_config
from metaserve.config import AlgorithmSection, ConfigError, PositiveFloat, task_kind
from metaserve.models.mlp import MLP
from metaserve.registry import AlgorithmEntry
from metaserve.runtime.loop import train_loop
from metaserve.tasks.sinusoid import Sinusoid
from metaserve.tuning.spec import TUNE_METRICS, parse_sweep, reported_metrics

TIMING = {"worker_time", "comm_time", "learner_time", "step_time", "tasks_per_s"}
TRAIN = {
    "steps": 2,
    "meta_batch": 2,
    "log_every": 2,
    "checkpoint_every": 2,
    "val_tasks": 2,
    "dtype": "float64",
    "device": "cpu",
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A tiny image-folder tree: 4 classes of 3 random 16 px images."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(4):
        folder = root / "images" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def tiny(name: str, out: Path, image_root: Path) -> dict:
    """The smallest config an entry can train on: sinusoid (families) for regression, images otherwise."""
    entry = registry.entry(name)
    if "regression" in entry.tasks:
        task = {
            "name": "sinusoid-families" if entry.learns_from == "families" else "sinusoid",
            "shots": 3,
            "query": 3,
            "tasks_per_family": 2,
        }
        model = {"name": "mlp", "hidden": [8]}
    else:
        split = {"sources": ["images"]}
        task = {
            "name": "image-folder",
            "root": str(image_root),
            "ways": 2,
            "shots": 1,
            "query": 1,
            "image_size": 16,
            "cache_dir": str(image_root / "cache"),
            "train": split,
            "test": split,
        }
        model = {"name": "conv4", "hidden": 4}
    return {
        "name": name,
        "output_dir": str(out),
        "task": task,
        "model": model,
        "algorithm": {"name": name},
        "train": TRAIN,
        "eval": {"episodes": 2},
    }


@pytest.mark.parametrize("name", registry.names())
def test_every_algorithm_trains_and_reports_what_its_entry_declares(name, tmp_path, image_root):
    config = as_config(tiny(name, tmp_path, image_root))
    rows: list[dict] = []
    result = train_loop(config, on_log=lambda row, ckpt: rows.append(row))
    entry, kind = registry.entry(name), task_kind(config.task)
    (row,) = rows
    per_task = {k for k in row if not k.startswith("val_")} - TIMING - {"step"}
    assert per_task == entry.metrics(kind)
    assert {k for k in row if k.startswith("val_")} == {f"val_{m}" for m in entry.eval_metrics(kind)}
    assert all(np.isfinite(v) for v in row.values())
    # every metric a sweep on this config may name is reported (Tune adds its own and the trainable two more)
    assert reported_metrics(config) - TUNE_METRICS - {"done_training", "start_step"} <= set(result.metrics)


# --- a new algorithm: a registry entry plus a contribute -------------------------------------------
class QueryGradientConfig(AlgorithmSection):
    name: Literal["toy-query-gradient"] = "toy-query-gradient"
    scale: PositiveFloat = 1.0


class QueryGradient(Algorithm):
    """Toy learner: contribution = scale * grad of the query loss at theta; adapting changes nothing."""

    def __init__(self, model, kind, *, scale: float, vectorize: bool = True):
        super().__init__(model, kind, vectorize)
        self.scale = scale

    def contribute(self, params, sx, sy, qx, qy):
        g, metrics = grad(self.measure, has_aux=True)(params, qx, qy)
        return {k: self.scale * v for k, v in g.items()}, metrics

    def adapt(self, params, x, y, steps=None):
        return params


TOY = AlgorithmEntry(
    "toy-query-gradient",
    QueryGradientConfig,
    lambda cfg, model, task, vectorize: QueryGradient(model, task_kind(task), scale=cfg.scale, vectorize=vectorize),
    evaluation="closed-form",
    reports_pre=False,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry._ENTRIES, TOY.name, TOY)


def test_a_toy_algorithm_trains_evaluates_and_is_validated_in_sweeps(toy, tmp_path):
    data = {
        "name": "toy",
        "seed": 4,
        "output_dir": str(tmp_path),
        "task": {"name": "sinusoid", "shots": 4, "query": 5},
        "model": {"name": "mlp", "hidden": [6]},
        "algorithm": {"name": TOY.name, "scale": 2.0, "outer": {"optimizer": "sgd", "lr": 0.1}},
        "train": {**TRAIN, "steps": 1, "log_every": 1, "checkpoint_every": 1, "meta_batch": 3},
        "eval": {"episodes": 4},
    }
    config = as_config(data)
    result = train_loop(config)
    # one SGD step on 2 * the mean query-loss gradient, computed here with autograd on the tasks themselves
    torch.manual_seed(4)
    model = MLP(1, 1, (6,)).double()
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    tasks = [Sinusoid(shots=4, query=5).sample(4, 0, i, None, "train").to("cpu", torch.float64) for i in range(3)]
    grads = [
        torch.autograd.grad(
            (
                (functional_call(model, {k: v.requires_grad_(True) for k, v in theta.items()}, t.query_x) - t.query_y)
                ** 2
            ).mean(),
            list(theta.values()),
        )
        for t in tasks
    ]
    want = {k: theta[k] - 0.1 * 2.0 * sum(g[j] for g in grads) / 3 for j, k in enumerate(theta)}
    for k in want:
        torch.testing.assert_close(result.params[k], want[k], rtol=1e-10, atol=1e-12)
    assert result.test is not None and result.test.metric == "mse" and len(result.test.curve) == 1
    # sweep validation knows its keys and the metrics it reports
    base = {"toy": {"inline": data}}
    assert parse_sweep(
        {"name": "s", "base": base, "space": {"algorithm.scale": {"grid": [1.0, 3.0]}}, "metric": "val_loss"}, tmp_path
    )
    with pytest.raises(ConfigError, match="algorithm.scale=-1.0"):
        parse_sweep({"name": "s", "base": base, "space": {"algorithm.scale": {"grid": [-1.0]}}}, tmp_path)
    with pytest.raises(ConfigError, match="'loss_pre' is never reported"):
        parse_sweep(
            {"name": "s", "base": base, "space": {"algorithm.scale": {"grid": [1.0]}}, "metric": "loss_pre"}, tmp_path
        )


def test_unknown_algorithm_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"algorithm.name='nope' is not one of: .*lazy-maml.*protonet"):
        as_config({"algorithm": {"name": "nope"}})
