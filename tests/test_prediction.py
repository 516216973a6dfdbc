"""A prediction depends only on the support set and its own query: batch-norm modes, any ways, the input contract.

References are independent of metaserve's normalisation code: torch's own nn.BatchNorm2d, in training
mode for the transductive mode, in eval mode with its running statistics set to the support set's
per-layer moments for the support mode; finite differences for the support-mode meta-gradient.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metaserve.api import MetaModel, as_config
from metaserve.config import parse_config
from metaserve.evaluation import class_overlap, evaluate, meta_test_record
from metaserve.experiment import build_learner
from metaserve.tasks.base import Task
from metaserve.tasks.image_cache import decode_image
from metaserve.tasks.images import ClassPool, FewShotImages, ImageSpace

from conftest import OMNIGLOT, ROOT
from references import finite_differences

SIZE, WAYS, SHOTS, QUERY = 16, 3, 2, 3
ADAPTING = [
    "maml",
    "fomaml",
    "reptile",
    "lazy-maml",
    "lazy-reptile",
    "pretrain",
    "maltml",
    "protonet",
    "matching",
    "relation",
    "siamese",
]


def image_config(algorithm: str, **extra) -> dict:
    task = "omniglot-families" if algorithm.startswith("maltml") else "omniglot"  # maltml: one task = finetuning
    return {
        "task": {"name": task, "ways": WAYS, "shots": SHOTS, "query": QUERY, "image_size": SIZE},
        "model": {"name": "conv4", "hidden": 4, **extra.pop("model", {})},
        "algorithm": {"name": algorithm, **extra},
        "train": {"dtype": "float64", "device": "cpu"},
    }


def meta_model(config: dict, seed: int = 0) -> MetaModel:
    learner = build_learner(parse_config({**config, "seed": seed}), "cpu")
    params = learner.initial_params()
    gen = torch.Generator().manual_seed(seed + 1)  # not the initial ones: batch-norm weights away from 1, biases from 0
    noisy = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    return MetaModel(learner, noisy, 0)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SUPPORT_Y = torch.arange(WAYS).repeat_interleave(SHOTS)


@pytest.mark.parametrize("algorithm", ADAPTING)
def test_a_prediction_depends_only_on_the_support_set_and_its_own_query(algorithm):
    extra = {"fce": True} if algorithm == "matching" else {}
    model = meta_model(image_config(algorithm, **extra))
    adapted = model.adapt(images(WAYS * SHOTS, 1), SUPPORT_Y, steps=2)
    queries, others = images(5, 2), images(7, 3)
    batch = adapted.predict(queries)
    alone = torch.cat([adapted.predict(queries[i : i + 1]) for i in range(5)])
    mixed = adapted.predict(torch.cat([others[:4], queries, others[4:]]))[4:9]
    assert batch.shape == (5, WAYS)
    torch.testing.assert_close(alone, batch, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mixed, batch, rtol=1e-9, atol=1e-10)
    # the transductive mode is still there, and there the other queries do change the answer
    trans = model.adapt(images(WAYS * SHOTS, 1), SUPPORT_Y, steps=2, norm="transductive")
    alone_t = torch.cat([trans.predict(queries[i : i + 2]) for i in range(0, 4, 2)])
    assert not torch.allclose(alone_t, trans.predict(queries)[:4], rtol=1e-6, atol=1e-8)


class TorchConv4(nn.Module):
    """conv4 written with torch's nn.BatchNorm2d, parameter names as metaserve's Conv4: the reference network."""

    def __init__(self, hidden: int, ways: int):
        super().__init__()
        self.features = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1),
                    nn.BatchNorm2d(hidden),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
                for i in range(4)
            ]
        )
        self.head = nn.Linear(hidden * (SIZE // 16) ** 2, ways)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def reference_net(params) -> TorchConv4:
    net = TorchConv4(4, WAYS).double()
    missing, unexpected = net.load_state_dict(params, strict=False)
    assert not unexpected and all("running" in k or "num_batches" in k for k in missing)
    return net


def support_moments(net: TorchConv4, sx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The input moments of every BatchNorm2d when the support set goes through the network in training mode."""
    seen = []

    def record(module, args):
        seen.append((args[0].mean((0, 2, 3)), args[0].var((0, 2, 3), unbiased=False)))

    hooks = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.train()(sx)
    for h in hooks:
        h.remove()
    return seen


def test_support_mode_is_torch_batch_norm_with_the_support_statistics_and_transductive_is_batch_statistics():
    model = meta_model(image_config("maml"))
    sx, qx = images(WAYS * SHOTS, 1), images(4, 2)
    net = reference_net(model.params)
    with torch.no_grad():
        transductive = net.train()(qx)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn, (mean, var) in zip(norms, support_moments(net, sx)):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        support = net.eval()(qx)
    torch.testing.assert_close(model.adapt(sx, SUPPORT_Y, steps=0).predict(qx), support, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        model.adapt(sx, SUPPORT_Y, steps=0, norm="transductive").predict(qx), transductive, rtol=1e-9, atol=1e-10
    )


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "relation"])
def test_support_mode_meta_training_is_a_pure_vmappable_function_with_the_finite_difference_gradient(algorithm):
    model = meta_model(image_config(algorithm, model={"batch_norm": "support"}))
    algo = model.learner.algorithm
    assert algo.norm == "support"
    tasks = [
        Task(images(WAYS * SHOTS, 10 + i), SUPPORT_Y, images(WAYS * 2, 20 + i), torch.arange(WAYS).repeat(2))
        for i in range(3)
    ]
    algo.vectorize = True
    vmapped = algo.batch_update(model.params, tasks)
    algo.vectorize = False
    looped = algo.batch_update(model.params, tasks)
    for k in looped.contribution:
        torch.testing.assert_close(vmapped.contribution[k], looped.contribution[k], rtol=1e-9, atol=1e-11)
    t = tasks[0]
    got = algo.task_update(model.params, t).contribution
    small = {k: v for k, v in model.params.items() if k.startswith("features.3.") or k.startswith("head")}

    def loss(sub):
        p = {**model.params, **sub}
        return algo.contribute(p, t.support_x, t.support_y, t.query_x, t.query_y)[1]["loss"]

    if algorithm == "maml":  # the contribution is the gradient of the post-adaptation query loss, support-normalised

        def loss(sub):
            from metaserve.algorithms.inner import sgd_adapt

            p = sgd_adapt(algo.loss, {**model.params, **sub}, t.support_x, t.support_y, algo.inner_lr, algo.inner_steps)
            return algo.measure_query(p, t.support_x, t.query_x, t.query_y)[0].detach()

    want = finite_differences(loss, small)
    for k in small:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_more_classes_than_the_head_fails_naming_both_numbers():
    model = meta_model(image_config("maml"))
    with pytest.raises(ValueError, match=r"support set has 5 classes but this maml model's classifier head has 3 out"):
        model.adapt(images(5, 1), torch.arange(5))
    pools = {"train": pool(8, 0), "test": pool(8, 1)}
    distribution = FewShotImages(pools, ImageSpace(5, 1, 2), rotations=False)
    with pytest.raises(ValueError, match=r"5 classes but this maml model.s classifier head has 3 outputs"):
        evaluate(model.learner, model.params, distribution, seed=0, episodes=2)


def test_fewer_classes_than_the_head_give_the_logits_of_those_classes():
    model = meta_model(image_config("maml"))
    sx = images(4, 1)
    two = model.adapt(sx, [0, 0, 1, 1], steps=1).predict(images(3, 2))
    assert two.shape == (3, 2)
    # by hand: one SGD step on the cross-entropy over the whole 3-output head, then its first 2 logits
    algo, y = model.learner.algorithm, torch.tensor([0, 0, 1, 1])
    params = {k: v.clone().requires_grad_(True) for k, v in model.params.items()}
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(algo.forward(params, sx), y), list(params.values()))
    phi = {k: (v - algo.inner_lr * g).detach() for (k, v), g in zip(params.items(), grads)}
    full = algo.forward(phi, images(3, 2), algo.norm_stats(phi, sx))
    assert full.shape == (3, WAYS)
    torch.testing.assert_close(two, full[:, :2])


def test_labels_must_be_0_to_n_minus_1_or_mapped_explicitly():
    model = meta_model(image_config("protonet"))
    sx = images(4, 1)
    with pytest.raises(ValueError, match=r"labels \[0, 1, 3\].*missing \[2\]"):
        model.adapt(sx, [0, 1, 3, 3])
    with pytest.raises(ValueError, match=r"labels \['z'\] that are not in classes"):
        model.adapt(sx, ["a", "b", "z", "a"], classes=["a", "b"])
    with pytest.raises(ValueError, match=r"classes \['c'\] have no support example"):
        model.adapt(sx, ["a", "b", "b", "a"], classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"must be 4 integer class labels"):
        model.adapt(sx, [0.0, 1.0, 1.0, 0.0])
    # mapped names: logit i is classes[i], the same scores as the integer labels they map to
    named = model.adapt(sx, ["cat", "dog", "dog", "cat"], classes=["dog", "cat"]).predict(images(3, 2))
    ints = model.adapt(sx, [1, 0, 0, 1]).predict(images(3, 2))
    torch.testing.assert_close(named, ints)


def test_inputs_may_be_arrays_or_lists_and_a_wrong_shape_names_the_expected_one():
    model = meta_model(image_config("protonet"))
    sx, qx = images(6, 1), images(2, 2)
    want = model.adapt(sx, SUPPORT_Y).predict(qx)
    torch.testing.assert_close(model.adapt(sx.numpy(), SUPPORT_Y.numpy()).predict(qx.numpy()), want)
    torch.testing.assert_close(model.adapt(sx[:, 0].tolist(), SUPPORT_Y.tolist()).predict(qx[:, 0]), want)  # [n, H, W]
    with pytest.raises(ValueError, match=r"query_x has shape \[2, 1, 8, 8\], but this model takes \[n, 1, 16, 16\]"):
        model.adapt(sx, SUPPORT_Y).predict(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match=r"support_x must be a tensor, a numpy array or a list"):
        model.adapt("images", SUPPORT_Y)
    reg = meta_model(
        {
            "task": {"name": "sinusoid"},
            "model": {"name": "mlp"},
            "algorithm": {"name": "maml"},
            "train": {"dtype": "float64"},
        }
    )
    x = torch.linspace(-5, 5, 10, dtype=torch.float64)
    y = torch.sin(x)
    col = reg.adapt(x[:, None], y[:, None], steps=3).predict(x[:4, None])
    torch.testing.assert_close(reg.adapt(x.tolist(), y.numpy(), steps=3).predict(x[:4].numpy()), col)  # [n] -> [n, 1]
    with pytest.raises(ValueError, match=r"support_y has shape \[9\], but 10 support examples need targets"):
        reg.adapt(x, y[:9])
    with pytest.raises(ValueError, match=r"has shape \[10, 2\], but this model takes \[n, 1\]"):
        reg.adapt(torch.stack([x, x], 1), y)


def pool(classes: int, seed: int, per_class: int = 4, shift: int = 1, noise: float = 0.15) -> ClassPool:
    """Classes = random 4x4 block patterns (16x16 px); an image = its class's pattern shifted <= `shift` px + noise."""
    rng = np.random.default_rng(seed)
    per = []
    for _ in range(classes):
        proto = np.kron(rng.random((4, 4)), np.ones((4, 4)))
        imgs = []
        for _ in range(per_class):
            dx, dy = rng.integers(-shift, shift + 1, size=2)
            im = np.roll(np.roll(proto, dx, 0), dy, 1) + noise * rng.standard_normal((SIZE, SIZE))
            imgs.append(np.clip(im * 255, 0, 255).astype(np.uint8)[..., None])
        per.append(np.stack(imgs))
    return ClassPool.from_classes([f"c{seed}-{i}" for i in range(classes)], per)


def test_protonet_trained_5_way_predicts_20_way_tasks_well_above_chance():
    cfg = image_config("protonet", outer={"lr": 0.003})
    cfg["task"]["ways"], cfg["model"]["hidden"] = 5, 16
    learner = build_learner(parse_config(cfg), "cpu")
    algo, params = learner.algorithm, learner.initial_params()
    data = FewShotImages({"train": pool(30, 0), "test": pool(40, 1)}, ImageSpace(5, 1, 3), rotations=False)

    def accuracy_20_way(p) -> float:
        hits = total = 0
        for i in range(10):
            t = data.sample(0, 0, i, ImageSpace(20, 1, 2), "test")  # classes never seen in training
            logits = MetaModel(learner, p, 0).adapt(t.support_x, t.support_y).predict(t.query_x)
            assert logits.shape == (40, 20)
            hits, total = hits + int((logits.argmax(1) == t.query_y).sum()), total + len(t.query_y)
        return hits / total

    before, state = accuracy_20_way(params), learner.outer.init(params)
    for step in range(40):
        tasks = [data.sample(0, step, i).to("cpu", torch.float64) for i in range(4)]
        params, state = learner.outer_step(params, algo.batch_update(params, tasks).mean_contribution(), state)
    after = accuracy_20_way(params)
    assert after > 0.6 and after > before + 0.2  # chance is 5%; 5-way training is what lifts it (measured 0.27 -> 0.82)


def test_preprocess_applies_the_runs_transform_to_paths_pil_images_and_arrays(tmp_path):
    model = meta_model(image_config("protonet"))
    raw = (np.arange(40 * 30, dtype=np.int64).reshape(30, 40) % 251).astype(np.uint8)  # not square, not 16 px
    Image.fromarray(raw).save(tmp_path / "a.png")
    # by hand: grayscale, Lanczos to 16x16, inverted (omniglot), / 255, [n, 1, H, W]
    resized = np.asarray(Image.fromarray(raw).resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    want = (255 - resized) / 255
    stack = np.stack([raw[..., None]] * 2)
    for given in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(raw), raw, [raw, raw], stack):
        x = model.preprocess(given)
        assert x.shape[1:] == (1, SIZE, SIZE) and x.dtype == torch.float64
        np.testing.assert_allclose(x[0, 0].numpy(), want, atol=1e-6)
    # the same as what the omniglot loader caches for that file
    cached = decode_image((tmp_path / "a.png").read_bytes(), "a.png", SIZE, "L", invert=True)[..., 0]
    np.testing.assert_array_equal(cached, np.round(want * 255).astype(np.uint8))
    assert model.transform["invert"] is True and model.transform["size"] == SIZE
    with pytest.raises(ValueError, match=r"uint8 \[H, W\] or \[H, W, C\].*got float64"):
        model.preprocess(raw.astype(np.float64))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.preprocess(tmp_path / "missing.png")


def test_overlapping_train_and_test_classes_are_warned_and_recorded():
    shared = pool(4, 0)
    data = FewShotImages(
        {
            "train": shared,
            "test": ClassPool.from_classes(shared.class_names[:2] + ["x", "y"], [shared.class_images(0)] * 4),
        },
        ImageSpace(2, 1, 1),
        rotations=False,
    )
    assert class_overlap(data) == {
        "stream": "test",
        "classes": 4,
        "training_classes": 4,
        "shared": 2,
        "shared_examples": shared.class_names[:2],
    }
    config = parse_config(image_config("protonet"))
    with pytest.warns(UserWarning, match=r"2 of the 4 evaluated \(test\) classes are also meta-training classes"):
        record = meta_test_record(config, data)
    assert record["class_overlap"]["shared"] == 2 and record["batch_norm"] == "support"
    disjoint = FewShotImages({"train": pool(4, 0), "test": pool(4, 1)}, ImageSpace(2, 1, 1), rotations=False)
    assert class_overlap(disjoint)["shared"] == 0


def test_eval_options_become_test_task_overrides():
    import argparse

    from metaserve.commands.eval import register, test_overrides

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(
        [
            "eval",
            "run",
            "--ways",
            "20",
            "--shots",
            "1",
            "--sources",
            "a.zip, b.zip",
            "--alphabets",
            "all",
            "--batch-norm",
            "transductive",
        ]
    )
    assert test_overrides(args) == [
        "task.ways=20",
        "task.shots=1",
        'task.test.sources=["a.zip", "b.zip"]',
        "task.test.alphabets=null",
    ]
    assert args.batch_norm == "transductive"
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "run", "--batch-norm", "running"])


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot data not found at {OMNIGLOT}")
def test_eval_command_tests_other_ways_and_alphabets_and_flags_training_classes(tmp_path, capsys):
    from metaserve.cli import main
    from metaserve.runtime.loop import train_loop

    cfg = as_config(
        ROOT / "configs/omniglot-protonet-5w1s.yaml",
        [
            "model.hidden=4",
            "task.query=1",
            "train.steps=2",
            "train.meta_batch=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "train.val_tasks=0",
            "eval.episodes=4",
            "train.device=cpu",
            f"output_dir={tmp_path}",
            f"task.cache_dir={tmp_path / 'cache'}",
        ],
    )
    run = train_loop(cfg).run_dir
    record = json.loads((run / "test.json").read_text())
    assert record["batch_norm"] == "support" and record["class_overlap"]["shared"] == 0  # the default split is disjoint
    assert record["transform"]["invert"] is True
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                str(run),
                "--ways",
                "20",
                "--query",
                "2",
                "--episodes",
                "3",
                "--alphabets",
                "Greek",
                "--batch-norm",
                "transductive",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "are also meta-training classes" in printed and "batch norm: transductive" in printed
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["batch_norm"] == "transductive"
    assert result["class_overlap"]["shared"] == result["class_overlap"]["classes"] == 24  # Greek is in both zips
    assert main(["eval", str(run), "--ways", "0"]) == 2
    assert "task.ways" in capsys.readouterr().err
