"""Meta-SGD and ANIL against independent references, in float64.

The references adapt with plain `torch.autograd.grad` (or a closed-form gradient) and differentiate by
central finite differences; none of metaserve's adaptation code is used to compute what is expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import metaserve
from metaserve.algorithms import ANIL, ANIL1st, MetaSGD, MetaSGD1st
from metaserve.algorithms.anil import head_parameter_names
from metaserve.api import as_config
from metaserve.config import ConfigError, load_config
from metaserve.experiment import build_learner
from metaserve.models.conv4 import Conv4
from metaserve.models.mlp import MLP
from metaserve.runtime.loop import train_loop
from metaserve.tasks.base import Task
from metaserve.tasks.sinusoid import Sinusoid

from references import assert_params_close, finite_differences, relative_gap

DT = torch.float64
ALPHA = 0.1  # ANIL's inner lr: large enough that second-order terms are far above finite-difference noise


def mlp_and_params(hidden=(8,), seed=0):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden).to(DT)
    return model, {k: v.detach().clone() for k, v in model.named_parameters()}


def with_rates(theta, seed=1, low=0.02, high=0.2):
    """theta plus per-entry learning rates lr.<name>, uniform in [low, high] (not all equal)."""
    gen = torch.Generator().manual_seed(seed)
    rates = {f"lr.{k}": low + (high - low) * torch.rand(v.shape, generator=gen, dtype=DT) for k, v in theta.items()}
    return {**theta, **rates}


def sinusoid_task(index=0) -> Task:
    return Sinusoid(shots=10, query=10).sample(0, 0, index).to("cpu", DT)


def mse(model, params, x, y):
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


def autograd_grad(model, params, x, y):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    return dict(zip(leaves, torch.autograd.grad(mse(model, leaves, x, y), list(leaves.values()))))


def meta_sgd_reference(model, params, x, y, k):
    """phi_{j+1} = phi_j - alpha o grad L_S(phi_j), gradients by torch.autograd, no graph kept."""
    theta = {n: v for n, v in params.items() if not n.startswith("lr.")}
    phi = {n: v.detach().clone() for n, v in theta.items()}
    for _ in range(k):
        g = autograd_grad(model, phi, x, y)
        phi = {n: phi[n] - params[f"lr.{n}"] * g[n] for n in phi}
    return phi


# --- Meta-SGD -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_meta_sgd_meta_gradient_in_theta_and_alpha_matches_finite_differences(k):
    model, theta = mlp_and_params()
    params, task = with_rates(theta), sinusoid_task()
    got = MetaSGD(model, "regression", inner_steps=k, vectorize=False).task_update(params, task).contribution

    def query_loss(p):
        return mse(model, meta_sgd_reference(model, p, task.support_x, task.support_y, k), task.query_x, task.query_y)

    want = finite_differences(query_loss, params)
    assert got.keys() == params.keys() and any(n.startswith("lr.") for n in got)
    assert_params_close(got, want, rtol=1e-5, atol=1e-7)
    assert max(float(want[n].abs().max()) for n in want if n.startswith("lr.")) > 1e-3  # alpha really gets a gradient
    first = MetaSGD1st(model, "regression", inner_steps=k, vectorize=False).task_update(params, task).contribution
    assert relative_gap(first, want) > 1e-3  # so this test tells second order from first order


def test_meta_sgd_first_order_is_the_hand_derived_gradient():
    # k=1, inner gradient g constant: d/dtheta L_Q(theta - alpha g) = grad L_Q(theta'), d/dalpha = -g o grad L_Q(theta')
    model, theta = mlp_and_params()
    params, task = with_rates(theta), sinusoid_task(index=2)
    g = autograd_grad(model, theta, task.support_x, task.support_y)
    adapted = {n: theta[n] - params[f"lr.{n}"] * g[n] for n in theta}
    q = autograd_grad(model, adapted, task.query_x, task.query_y)
    want = {**q, **{f"lr.{n}": -g[n] * q[n] for n in theta}}
    got = MetaSGD1st(model, "regression", inner_steps=1, vectorize=False).task_update(params, task).contribution
    assert_params_close(got, want, rtol=1e-10, atol=1e-12)


def test_meta_sgd_inner_step_is_the_closed_form_update_of_a_linear_model():
    # f(x) = w x + b, L = mean((f - y)^2): dL/dw = 2 mean((f - y) x), dL/db = 2 mean(f - y)
    model = MLP(1, 1, ()).to(DT)
    w, b = torch.tensor([[0.7]], dtype=DT), torch.tensor([-0.3], dtype=DT)
    params = {
        "0.weight": w,
        "0.bias": b,
        "lr.0.weight": torch.tensor([[0.05]], dtype=DT),
        "lr.0.bias": torch.tensor([0.2], dtype=DT),
    }
    x = torch.tensor([[-1.0], [0.5], [2.0]], dtype=DT)
    y = torch.tensor([[1.0], [0.0], [3.0]], dtype=DT)
    r = w * x + b - y
    want_w, want_b = w - 0.05 * 2 * (r * x).mean(), b - 0.2 * 2 * r.mean()
    adapted = MetaSGD(model, "regression", inner_steps=1).adapt(params, x, y)
    torch.testing.assert_close(adapted["0.weight"], want_w.reshape(1, 1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(adapted["0.bias"], want_b.reshape(1), rtol=1e-12, atol=1e-14)
    assert adapted["lr.0.bias"].item() == 0.2  # alpha travels with the adapted parameters, unchanged
    # lr_bounds clamp the alpha the step uses: 0.2 -> 0.1 for the bias, 0.05 stays
    bounded = MetaSGD(model, "regression", inner_steps=1, lr_bounds=(0.0, 0.1)).adapt(params, x, y)
    torch.testing.assert_close(bounded["0.bias"], (b - 0.1 * 2 * r.mean()).reshape(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bounded["0.weight"], want_w.reshape(1, 1), rtol=1e-12, atol=1e-14)


def test_meta_sgd_vectorised_batch_equals_per_task_loop():
    model, theta = mlp_and_params()
    params, tasks = with_rates(theta), [sinusoid_task(i) for i in range(3)]
    vec = MetaSGD(model, "regression", inner_steps=2, vectorize=True).batch_update(params, tasks)
    loop = MetaSGD(model, "regression", inner_steps=2, vectorize=False).batch_update(params, tasks)
    assert_params_close(vec.contribution, loop.contribution, rtol=1e-10, atol=1e-12)


def sinusoid_config(tmp_path, algorithm, **train):
    return as_config(
        {
            "name": "msgd",
            "seed": 3,
            "output_dir": str(tmp_path),
            "task": {"name": "sinusoid", "shots": 5, "query": 5},
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": algorithm,
            "train": {
                "steps": 2,
                "meta_batch": 2,
                "log_every": 2,
                "checkpoint_every": 2,
                "val_tasks": 2,
                "dtype": "float64",
                "device": "cpu",
                **train,
            },
            "eval": {"episodes": 2},
        }
    )


def test_meta_sgd_learning_rates_are_initialised_from_config_checkpointed_and_used_by_adapt(tmp_path):
    ranged = build_learner(sinusoid_config(tmp_path, {"name": "meta-sgd", "init_lr": [0.01, 0.05]}))
    p = ranged.initial_params()
    model_names = [n for n, _ in ranged.algorithm.model.named_parameters()]
    assert [n for n in p if n.startswith("lr.")] == [f"lr.{n}" for n in model_names]
    rates = torch.cat([p[f"lr.{n}"].flatten() for n in model_names])
    assert all(p[f"lr.{n}"].shape == p[n].shape for n in model_names)
    assert float(rates.min()) >= 0.01 and float(rates.max()) <= 0.05 and float(rates.std()) > 0.005
    assert_params_close(p, ranged.initial_params(), rtol=0, atol=0)  # a pure function of the seed
    constant = build_learner(sinusoid_config(tmp_path, {"name": "meta-sgd-1st", "init_lr": 0.03})).initial_params()
    assert all(bool((v == 0.03).all()) for n, v in constant.items() if n.startswith("lr."))

    trained = {"name": "meta-sgd", "init_lr": 0.03, "outer": {"optimizer": "sgd", "lr": 0.1}}
    result = train_loop(sinusoid_config(tmp_path, trained))
    loaded = metaserve.load(result.run_dir)
    assert_params_close(loaded.params, result.params, rtol=0, atol=0)
    assert any(not torch.equal(v, torch.full_like(v, 0.03)) for n, v in loaded.params.items() if n.startswith("lr."))
    task = sinusoid_task(index=5)
    model = loaded.learner.algorithm.model.to(DT)
    want = meta_sgd_reference(model, loaded.params, task.support_x, task.support_y, 1)
    got = loaded.adapt(task.support_x, task.support_y, steps=1).params
    assert_params_close({n: got[n] for n in want}, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"init_lr": [0.1, 0.01]}, r"init_lr=\[0.1, 0.01\] is an empty range"),
        ({"init_lr": 0.0}, r"algorithm.init_lr"),
        ({"lr_bounds": [0.2, 0.1]}, r"lr_bounds=\[0.2, 0.1\] is not a range"),
        ({"lr_bounds": [0.0, 0.05]}, r"init_lr=\(0.005, 0.1\) lies outside lr_bounds=\[0.0, 0.05\]"),
        ({"inner_lr": 0.1}, r"unknown config key 'algorithm.inner_lr'; known keys here: .*init_lr"),
    ],
)
def test_meta_sgd_config_errors_name_the_value(bad, message):
    with pytest.raises(ConfigError, match=message):
        as_config({"algorithm": {"name": "meta-sgd", **bad}})


# --- ANIL ---------------------------------------------------------------------------------------
def anil_reference(model, params, head, x, y, lr, k):
    """The head's k SGD steps with torch.autograd, the body held fixed."""
    p = {n: v.detach().clone() for n, v in params.items()}
    for _ in range(k):
        leaves = {n: (v.requires_grad_(True) if n in head else v) for n, v in p.items()}
        grads = torch.autograd.grad(mse(model, leaves, x, y), [leaves[n] for n in head])
        p = {n: (v - lr * grads[head.index(n)]).detach() if n in head else v for n, v in leaves.items()}
    return p


def test_head_parameters_are_the_final_linear_layer():
    assert head_parameter_names(MLP(1, 1, (8, 8))) == ("4.weight", "4.bias")
    assert head_parameter_names(Conv4(1, 5, 4, 16)) == ("head.weight", "head.bias")
    with pytest.raises(ValueError, match="final linear layer.*'features.3.1' \\(TaskNorm2d\\)"):
        head_parameter_names(Conv4(1, 0, 4, 16))  # no classifier head


@pytest.mark.parametrize("k", [1, 2])
def test_anil_body_meta_gradient_matches_finite_differences(k):
    model, theta = mlp_and_params(hidden=(6, 6))
    task = sinusoid_task(index=3)
    anil = ANIL(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)
    got = anil.task_update(theta, task).contribution
    head = ["4.weight", "4.bias"]

    def query_loss(p):
        adapted = anil_reference(model, p, head, task.support_x, task.support_y, ALPHA, k)
        return mse(model, adapted, task.query_x, task.query_y)

    want = finite_differences(query_loss, theta)
    assert_params_close(got, want, rtol=1e-5, atol=1e-7)
    body = [n for n in theta if n not in head]
    anil_1st = ANIL1st(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)
    first = anil_1st.task_update(theta, task).contribution
    assert relative_gap({n: first[n] for n in body}, {n: want[n] for n in body}) > 1e-3
    # first order: the plain gradient of L_Q at (body, adapted head)
    adapted = anil_reference(model, theta, head, task.support_x, task.support_y, ALPHA, k)
    assert_params_close(first, autograd_grad(model, adapted, task.query_x, task.query_y), rtol=1e-10, atol=1e-12)


def test_anil_adapt_changes_only_the_head():
    torch.manual_seed(0)
    model = Conv4(1, 3, 4, 16).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 16, 16, generator=gen, dtype=DT), torch.arange(3).repeat_interleave(2)
    anil = ANIL(model, "classification", inner_lr=0.5, inner_steps=3, vectorize=False)
    adapted = anil.adapt(theta, x, y)
    assert list(adapted) == list(theta)
    for name in theta:
        if name.startswith("head."):
            assert not torch.equal(adapted[name], theta[name]), name
        else:
            assert torch.equal(adapted[name], theta[name]), name

    def loss(p):
        return float(torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y))

    assert loss(adapted) < loss(theta)


@pytest.mark.parametrize("name", ["sinusoid-meta-sgd", "omniglot-anil-5w1s", "mnist-maml-adaptive"])
def test_the_shipped_configs_validate(name):
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert config.name == name
