"""MANN (Santoro et al. 2016): LRUA write and cosine read on hand-made memories, the label offset, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from metaserve.algorithms.mann import cosine_read, least_used, lru_write
from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.experiment import build_distribution, build_learner

T = torch.tensor


def test_cosine_read_weights_are_the_softmax_of_cosines_and_the_read_their_mix():
    memory = T([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    weights, read = cosine_read(T([3.0, 0.0], dtype=torch.float64), memory)
    cos = [1.0, 0.0, 1 / math.sqrt(2)]  # eq. 2 by hand
    want = [math.exp(c) / sum(math.exp(d) for d in cos) for c in cos]  # eq. 3
    assert weights.tolist() == pytest.approx(want, rel=1e-12)
    assert read.tolist() == pytest.approx([want[0] + want[2], 2 * want[1] + want[2]], rel=1e-12)  # eq. 4


def test_lru_write_zeroes_the_least_used_slot_then_adds_the_gated_key():
    memory = T([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    read_prev, lu_prev = T([0.7, 0.2, 0.1], dtype=torch.float64), T([0.0, 0.0, 1.0], dtype=torch.float64)
    key, alpha = T([10.0, -1.0], dtype=torch.float64), T(math.log(3.0), dtype=torch.float64)  # sigma(alpha) = 3/4
    new, write = lru_write(memory, key, alpha, read_prev, lu_prev)
    w = [0.75 * 0.7, 0.75 * 0.2, 0.75 * 0.1 + 0.25]  # eq. 7
    assert write.tolist() == pytest.approx(w, rel=1e-12)
    want = [[1 + 10 * w[0], 2 - w[0]], [3 + 10 * w[1], 4 - w[1]], [10 * w[2], -w[2]]]  # eq. 8, slot 2 zeroed first
    np.testing.assert_allclose(new.numpy(), want, rtol=1e-12)
    assert least_used(T([0.5, 0.1, 0.3])).tolist() == [0.0, 1.0, 0.0]
    assert least_used(T([0.2, 0.2, 0.3])).tolist() == [1.0, 0.0, 0.0]  # ties: the lowest index


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("mann-images")
    rng = np.random.default_rng(1)
    for c in range(4):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / f"c{c}" / f"{i}.png")
    return root


def config(images, vectorize="off", **algorithm):
    split = {"sources": ["images"]}
    task = {
        "name": "image-folder",
        "root": str(images),
        "ways": 3,
        "shots": 2,
        "query": 1,
        "image_size": 16,
        "cache_dir": str(images / "cache"),
        "train": split,
        "test": split,
    }
    return as_config(
        {
            "seed": 2,
            "task": task,
            "model": {"name": "conv4", "hidden": 2},
            "algorithm": {"name": "mann", "controller_hidden": 5, "memory_slots": 4, "memory_size": 3, **algorithm},
            "train": {"dtype": "float64", "device": "cpu", "vectorize": vectorize},
        }
    )


def tasks(cfg, n=2):
    dist = build_distribution(cfg)
    return [dist.sample(cfg.seed, 0, i, None, "train").to("cpu", torch.float64) for i in range(n)]


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gradient_matches_finite_differences_and_vmap_matches_the_loop(images, controller):
    cfg = config(images, controller=controller)
    learner = build_learner(cfg)
    alg, params = learner.algorithm, learner.initial_params()
    task = tasks(cfg, 1)[0]
    fields = (task.support_x, task.support_y, task.query_x, task.query_y)
    g, _ = alg.contribute(params, *fields)
    eps = 1e-6
    recurrent = "controller.x2g.weight" if controller == "lstm" else "controller.weight"
    for key in ["out.weight", "key.bias", "gate.weight", recurrent, "encoder.features.0.0.weight"]:
        idx = (0,) * params[key].dim()
        up, down = dict(params), dict(params)
        up[key], down[key] = params[key].clone(), params[key].clone()
        up[key][idx] += eps
        down[key][idx] -= eps
        fd = (alg.sequence_loss(up, *fields)[0] - alg.sequence_loss(down, *fields)[0]).item() / (2 * eps)
        assert g[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), key
    vmapped = build_learner(config(images, "on", controller=controller)).algorithm.batch_update(params, tasks(cfg))
    looped = alg.batch_update(params, tasks(cfg))
    for k in looped.contribution:
        torch.testing.assert_close(vmapped.contribution[k], looped.contribution[k], rtol=1e-9, atol=1e-12)


def test_label_offset_and_adapt_predict_reproduce_the_training_sequence(images):
    cfg = config(images)
    learner = build_learner(cfg)
    alg, params = learner.algorithm, learner.initial_params()
    task = tasks(cfg, 1)[0]
    logits, ys, _ = alg.read_support(params, task.support_x, task.support_y)
    # a step's prediction never sees its own label: relabel the step shown last, every support logit stays
    last = int(alg.order(task.support_x)[-1])
    relabelled = task.support_y.clone()
    relabelled[last] = (relabelled[last] + 1) % 3
    torch.testing.assert_close(alg.read_support(params, task.support_x, relabelled)[0], logits)
    # ... but the queries, one step later, do see it
    adapted = alg.adapt(params, task.support_x, task.support_y)
    other = alg.adapt(params, task.support_x, relabelled)
    assert not torch.allclose(alg.predict(adapted, task.query_x), alg.predict(other, task.query_x))
    loss, metrics = alg.sequence_loss(params, task.support_x, task.support_y, task.query_x, task.query_y)
    query = torch.nn.functional.cross_entropy(alg.predict(adapted, task.query_x), task.query_y)
    assert metrics["loss"].item() == pytest.approx(query.item(), rel=1e-12)


def test_mann_rejects_regression_and_bad_sizes_at_config_time():
    with pytest.raises(ConfigError, match="algorithm.name='mann' needs a classification task, not task.name='sinusoid"):
        as_config({"algorithm": {"name": "mann"}, "task": {"name": "sinusoid"}})
    for key, value, allowed in [
        ("memory_slots", 1, "greater than or equal to 2"),
        ("memory_size", 0, "greater than or equal to 1"),
        ("controller_hidden", 5000, "less than or equal to 1024"),
        ("gamma", 1.5, "less than or equal to 1"),
    ]:
        with pytest.raises(ConfigError, match=rf"algorithm\.{key}={value!r}: Input should be {allowed}"):
            as_config(
                {"algorithm": {"name": "mann", key: value}, "task": {"name": "omniglot"}, "model": {"name": "conv4"}}
            )
