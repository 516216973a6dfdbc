"""Meta Networks (Munkhdalai & Yu 2017): fast weights against a hand-written forward pass, the meta-gradient
against finite differences, and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.func import functional_call

from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.experiment import build_distribution, build_learner


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("metanet-images")
    rng = np.random.default_rng(2)
    for c in range(3):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / f"c{c}" / f"{i}.png")
    split = {"sources": ["images"]}
    task = {
        "name": "image-folder",
        "root": str(root),
        "ways": 3,
        "shots": 2,
        "query": 1,
        "image_size": 16,
        "cache_dir": str(root / "cache"),
        "train": split,
        "test": split,
    }
    cfg = as_config(
        {
            "seed": 1,
            "task": task,
            "model": {"name": "conv4", "hidden": 2},
            "algorithm": {"name": "metanet", "embed_size": 3, "meta_hidden": 4},
            "train": {"dtype": "float64", "device": "cpu", "vectorize": "off"},
        }
    )
    learner = build_learner(cfg)
    task = build_distribution(cfg).sample(cfg.seed, 0, 0, None, "train").to("cpu", torch.float64)
    return learner, learner.initial_params(), task, cfg


def prep(v: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    flat = [
        [math.log(abs(e)) / p, math.copysign(1.0, e)] if abs(e) >= math.exp(-p) else [-1.0, math.exp(p) * e]
        for e in v.reshape(-1).tolist()
    ]
    return torch.tensor(flat, dtype=torch.float64).reshape(*v.shape, 2)


def mlp(params, prefix, x):
    hidden = torch.relu(x @ params[f"{prefix}.net.0.weight"].T + params[f"{prefix}.net.0.bias"])
    return (hidden @ params[f"{prefix}.net.2.weight"].T + params[f"{prefix}.net.2.bias"]).squeeze(-1)


def reference_logits(model, params, sx, sy, qx):
    """The survey's account step by step: autograd per support example, explicit memory and attention."""
    enc = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
    # conv4 without head is its flattened features (conv4 itself is tested with MAML)
    hs, hq = functional_call(model.encoder, enc, (sx,)), functional_call(model.encoder, enc, (qx,))
    we, be, wb, bb = (params[k] for k in ("represent_layer.weight", "represent_layer.bias", "base.weight", "base.bias"))
    w = we.detach().clone().requires_grad_(True)
    slow_loss = torch.nn.functional.cross_entropy(torch.relu(hs @ w.T + be) @ wb.T + bb, sy)
    (g_rep,) = torch.autograd.grad(slow_loss, w)
    rep_fast = mlp(params, "rep_generator", prep(g_rep))  # theta^+ = F_w(grad L_emb)

    def rep(h):
        return torch.relu(h @ we.T + be) + torch.relu(h @ rep_fast.T)

    memory = []
    for i in range(sx.shape[0]):  # phi^+_i = G_v(grad_{W_b} L_task(x_i)), by autograd one example at a time
        b = wb.detach().clone().requires_grad_(True)
        loss_i = torch.nn.functional.cross_entropy((rep(hs[i : i + 1]) @ b.T + bb), sy[i : i + 1])
        (g_i,) = torch.autograd.grad(loss_i, b)
        memory.append(mlp(params, "weight_generator", prep(g_i)))
    keys, rq = rep(hs), rep(hq)
    cos = torch.stack([torch.stack([torch.dot(r, k) / (r.norm() * k.norm()) for k in keys]) for r in rq])
    attn = torch.softmax(cos, -1)
    return torch.stack(
        [
            rq[j] @ wb.T + bb + sum(attn[j, i] * memory[i] for i in range(len(memory))) @ rq[j]
            for j in range(rq.shape[0])
        ]
    )


def test_query_logits_equal_the_hand_written_fast_weight_pass(setup):
    learner, params, task, _ = setup
    alg = learner.algorithm
    got = alg.predict(alg.adapt(params, task.support_x, task.support_y), task.query_x)
    want = reference_logits(learner.algorithm.model, params, task.support_x, task.support_y, task.query_x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_meta_gradient_matches_finite_differences_end_to_end(setup):
    learner, params, task, _ = setup
    alg = learner.algorithm
    fields = (task.support_x, task.support_y, task.query_x, task.query_y)
    g, _ = alg.contribute(params, *fields)
    eps = 1e-6
    for key in [
        "base.weight",
        "represent_layer.weight",
        "rep_generator.net.0.weight",
        "weight_generator.net.2.bias",
        "encoder.features.1.0.weight",
    ]:
        idx = (0,) * params[key].dim()
        up, down = dict(params), dict(params)
        up[key], down[key] = params[key].clone(), params[key].clone()
        up[key][idx] += eps
        down[key][idx] -= eps
        fd = (alg.episode(up, *fields)[0] - alg.episode(down, *fields)[0]).item() / (2 * eps)
        assert g[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), key


def test_metanet_sizes_and_task_kind_are_validated():
    with pytest.raises(ConfigError, match="algorithm.name='metanet' needs a classification task, not task.name='sin"):
        as_config({"algorithm": {"name": "metanet"}})
    for key, value, allowed in [
        ("embed_size", 0, "greater than or equal to 1"),
        ("meta_hidden", 2000, "less than or equal to 1024"),
    ]:
        with pytest.raises(ConfigError, match=rf"algorithm\.{key}={value!r}: Input should be {allowed}"):
            as_config(
                {"algorithm": {"name": "metanet", key: value}, "task": {"name": "omniglot"}, "model": {"name": "conv4"}}
            )


def test_vmapped_tasks_give_the_looped_contributions(setup):
    learner, params, _, cfg = setup
    dist = build_distribution(cfg)
    tasks = [dist.sample(cfg.seed, 0, i, None, "train").to("cpu", torch.float64) for i in range(2)]
    looped = learner.algorithm.batch_update(params, tasks)
    vmapped = build_learner(as_config(cfg, ["train.vectorize=on"])).algorithm.batch_update(params, tasks)
    for k in looped.contribution:
        torch.testing.assert_close(vmapped.contribution[k], looped.contribution[k], rtol=1e-9, atol=1e-12)
