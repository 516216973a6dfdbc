"""MAML, FOMAML, Reptile and the outer optimisers against independent references.

Every reference here is written from the equations with plain torch ops (`functional_call`,
`torch.autograd.grad`, `torch.optim`), never with metaserve's own helpers, and in float64 so
central finite differences are accurate to ~1e-9.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metaserve import registry
from metaserve.algorithms import FOMAML, MAML, LazyMAML, ProtoNet, Reptile
from metaserve.algorithms.outer import adam_init, adam_update, build_outer, descent_direction, sgd_update
from metaserve.config import OuterSection
from metaserve.models.conv4 import Conv4
from metaserve.models.mlp import MLP
from metaserve.tasks.base import Task
from metaserve.tasks.sinusoid import Sinusoid

from conftest import bare_learner
from references import assert_params_close, finite_differences, relative_gap

DT = torch.float64
ALPHA = 0.1  # large enough that the second-order terms are far above finite-difference noise


# --- independent references ----------------------------------------------------------------------
def mlp_and_params(hidden=(8, 8), seed=0):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden).to(DT)
    return model, {k: v.detach().clone() for k, v in model.named_parameters()}


def sinusoid_task(index=0, seed=0) -> Task:
    return Sinusoid(shots=10, query=10).sample(seed, 0, index).to("cpu", DT)


def mse(model, params, x, y):
    """L(params) = mean((f(x) - y)^2), written out rather than via F.mse_loss."""
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


def plain_sgd(model, theta, x, y, lr, k):
    """k SGD steps on L_S with torch.autograd.grad; no graph is kept between steps."""
    phi = {n: t.detach().clone() for n, t in theta.items()}
    for _ in range(k):
        leaves = {n: t.requires_grad_(True) for n, t in phi.items()}
        grads = torch.autograd.grad(mse(model, leaves, x, y), list(leaves.values()))
        phi = {n: (leaves[n] - lr * g).detach() for n, g in zip(leaves, grads)}
    return phi


def grad_at(model, params, x, y):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    grads = torch.autograd.grad(mse(model, leaves, x, y), list(leaves.values()))
    return dict(zip(leaves, grads))


def finite_difference_meta_gradient(model, theta, task, lr, k, eps=1e-6):
    """Central differences of theta -> L_Q(adapt_k(theta)), one parameter entry at a time."""

    def f(p):
        return float(mse(model, plain_sgd(model, p, task.support_x, task.support_y, lr, k), task.query_x, task.query_y))

    return finite_differences(f, theta, eps)


# --- MAML / FOMAML / Reptile contributions -------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_maml_meta_gradient_matches_finite_differences(k):
    model, theta = mlp_and_params()
    task = sinusoid_task()
    maml = MAML(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)

    got = maml.task_update(theta, task).contribution
    want = finite_difference_meta_gradient(model, theta, task, ALPHA, k)

    assert_params_close(got, want, rtol=1e-5, atol=1e-7)
    # The first-order approximation must be measurably off, or this test could not tell them apart.
    fomaml = FOMAML(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)
    assert relative_gap(fomaml.task_update(theta, task).contribution, want) > 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_fomaml_is_query_gradient_at_adapted_parameters(k):
    model, theta = mlp_and_params()
    task = sinusoid_task(index=1)
    fomaml = FOMAML(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)

    phi = plain_sgd(model, theta, task.support_x, task.support_y, ALPHA, k)
    want = grad_at(model, phi, task.query_x, task.query_y)

    assert_params_close(fomaml.task_update(theta, task).contribution, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 5])
def test_reptile_contribution_is_sgd_displacement(k):
    model, theta = mlp_and_params()
    task = sinusoid_task(index=2)
    reptile = Reptile(model, "regression", inner_lr=ALPHA, inner_steps=k, vectorize=False)

    phi = plain_sgd(model, theta, task.support_x, task.support_y, ALPHA, k)
    want = {n: phi[n] - theta[n] for n in theta}

    update = reptile.task_update(theta, task)
    assert_params_close(update.contribution, want, rtol=1e-10, atol=1e-12)
    # Reptile adapts on the support set only: its displacement ignores the query set.
    other_query = Task(task.support_x, task.support_y, task.query_x + 1.0, -task.query_y)
    assert_params_close(reptile.task_update(theta, other_query).contribution, want, rtol=1e-10, atol=1e-12)
    # metrics: query loss before and after adaptation
    assert update.metrics["loss_pre"] == pytest.approx(float(mse(model, theta, task.query_x, task.query_y)), rel=1e-10)
    assert update.metrics["loss"] == pytest.approx(float(mse(model, phi, task.query_x, task.query_y)), rel=1e-10)


# --- vectorised path vs per-task loop ------------------------------------------------------------
def _gradient_learner(name, model, vectorize):
    kw = dict(inner_lr=ALPHA, inner_steps=3, vectorize=vectorize)
    if name == "maml":
        return MAML(model, "regression", **kw)
    if name == "fomaml":
        return FOMAML(model, "regression", **kw)
    if name == "reptile":
        return Reptile(model, "regression", **kw)
    return LazyMAML(model, "regression", leap=0.5, leap_target="mean", **kw)


def _assert_same_update(a, b):
    assert a.count == b.count == 4
    assert_params_close(a.contribution, b.contribution, rtol=1e-10, atol=1e-12)
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "lazy-maml"])
def test_vectorised_batch_equals_per_task_loop(name):
    model, theta = mlp_and_params()
    tasks = [sinusoid_task(index=i, seed=3) for i in range(4)]
    vec = _gradient_learner(name, model, vectorize=True).batch_update(theta, tasks)
    loop = _gradient_learner(name, model, vectorize=False).batch_update(theta, tasks)
    _assert_same_update(vec, loop)
    # and the loop really is the sum of single-task updates
    single = [_gradient_learner(name, model, vectorize=False).task_update(theta, t) for t in tasks]
    summed = {k: sum(u.contribution[k] for u in single) for k in theta}
    assert_params_close(loop.contribution, summed, rtol=1e-12, atol=1e-14)


def _image_task(gen, ways=3, shots=2, query=3, size=16) -> Task:
    sx = torch.randn(ways * shots, 1, size, size, generator=gen, dtype=DT)
    qx = torch.randn(ways * query, 1, size, size, generator=gen, dtype=DT)
    return Task(sx, torch.arange(ways).repeat_interleave(shots), qx, torch.arange(ways).repeat_interleave(query))


def test_protonet_vectorised_batch_equals_per_task_loop():
    torch.manual_seed(0)
    model = Conv4(in_channels=1, out_features=0, hidden=8, image_size=16).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    tasks = [_image_task(gen) for _ in range(4)]
    vec = ProtoNet(model, "classification", ways=3, vectorize=True).batch_update(theta, tasks)
    loop = ProtoNet(model, "classification", ways=3, vectorize=False).batch_update(theta, tasks)
    _assert_same_update(vec, loop)
    assert set(vec.metrics) == {"loss", "acc"}


def test_protonet_gradient_matches_hand_written_episode_loss():
    """Snell et al. eq. 1-2 written out: class means, softmax over -squared distances."""
    torch.manual_seed(1)
    model = Conv4(in_channels=1, out_features=0, hidden=8, image_size=16).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    task = _image_task(torch.Generator().manual_seed(1))
    leaves = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    es = model_embed(model, leaves, task.support_x)
    eq = model_embed(model, leaves, task.query_x)
    protos = torch.stack([es[task.support_y == c].mean(0) for c in range(3)])
    logits = -(torch.cdist(eq, protos) ** 2)
    loss = torch.nn.functional.cross_entropy(logits, task.query_y)
    want = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    got = ProtoNet(model, "classification", ways=3, vectorize=False).task_update(theta, task)
    assert_params_close(got.contribution, want, rtol=1e-8, atol=1e-10)
    assert got.metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-10)


def model_embed(model, params, x):
    """Conv4 features with the given parameters, using torch.func.functional_call on `features`."""
    feats = {k.removeprefix("features."): v for k, v in params.items() if k.startswith("features.")}
    return torch.flatten(functional_call(model.features, feats, (x,)), start_dim=1)


# --- outer optimisers ----------------------------------------------------------------------------
def _random_params(gen):
    return {"w": torch.randn(3, 4, generator=gen, dtype=DT), "b": torch.randn(4, generator=gen, dtype=DT)}


@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adam_update_matches_torch_optim_adam(lr):
    gen = torch.Generator().manual_seed(0)
    params = _random_params(gen)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=lr)
    state = adam_init(params)
    for _ in range(6):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=DT) * 3 for k, v in params.items()}
        params, state = adam_update(params, grads, state, lr)
        for k, p in ref.items():
            p.grad = grads[k].clone()
        opt.step()
        assert_params_close(params, {k: v.detach() for k, v in ref.items()}, rtol=1e-12, atol=1e-14)
    assert int(state["step"]) == 6


def test_sgd_update_matches_torch_optim_sgd():
    gen = torch.Generator().manual_seed(1)
    params = _random_params(gen)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(ref.values()), lr=0.05)
    state: dict = {}
    for _ in range(4):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in params.items()}
        params, state = sgd_update(params, grads, state, 0.05)
        for k, p in ref.items():
            p.grad = grads[k].clone()
        opt.step()
    assert_params_close(params, {k: v.detach() for k, v in ref.items()}, rtol=1e-13, atol=1e-15)


def outer_step(name, optimizer, lr, params, mean, state=None):
    """The learner loop's outer step for algorithm `name`: its entry's direction, the configured optimiser."""
    opt = build_outer(OuterSection(optimizer=optimizer, lr=lr))
    return opt.update(
        params, descent_direction(registry.entry(name).contribution, mean), opt.init(params) if state is None else state
    )


def test_maml_outer_step_is_adam_descent_on_mean_gradient():
    model, theta = mlp_and_params(hidden=(4,))
    ref = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=0.01)
    params, state = theta, None
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        g = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in theta.items()}
        params, state = outer_step("maml", "adam", 0.01, params, g, state)
        for k, p in ref.items():
            p.grad = g[k].clone()
        opt.step()
    assert_params_close(params, {k: v.detach() for k, v in ref.items()}, rtol=1e-12, atol=1e-14)


def test_reptile_outer_step_sgd_moves_toward_adapted_parameters():
    """Nichol et al. 2018, Algorithm 2: theta <- theta + epsilon * mean_i (phi_i - theta)."""
    model, theta = mlp_and_params()
    eps = 0.3
    reptile = Reptile(model, "regression", inner_lr=ALPHA, inner_steps=4)
    tasks = [sinusoid_task(index=i, seed=5) for i in range(3)]
    update = reptile.batch_update(theta, tasks)
    mean_delta = {k: v / update.count for k, v in update.contribution.items()}
    new, _ = outer_step("reptile", "sgd", eps, theta, mean_delta)

    phis = [plain_sgd(model, theta, t.support_x, t.support_y, ALPHA, 4) for t in tasks]
    want = {k: theta[k] + eps * sum(p[k] - theta[k] for p in phis) / len(phis) for k in theta}
    assert_params_close(new, want, rtol=1e-10, atol=1e-12)


def test_reptile_outer_step_adam_treats_delta_as_negative_gradient():
    model, theta = mlp_and_params(hidden=(4,))
    delta = {k: torch.randn_like(v) for k, v in theta.items()}
    new, _ = outer_step("reptile", "adam", 0.01, theta, delta)
    ref = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=0.01)
    for k, p in ref.items():
        p.grad = -delta[k]
    opt.step()
    assert_params_close(new, {k: v.detach() for k, v in ref.items()}, rtol=1e-12, atol=1e-14)


# --- meta-test evaluation ------------------------------------------------------------------------
def test_evaluate_matches_hand_written_adaptation_curve():
    """Query MSE after 0..k plain SGD steps, averaged over test episodes, with a 1.96 std/sqrt(n) CI."""
    from metaserve.evaluation import evaluate

    model, theta = mlp_and_params()
    dist = Sinusoid(shots=10, query=10)
    steps, episodes = 3, 12
    losses = torch.zeros(episodes, steps + 1, dtype=DT)
    for i in range(episodes):
        t = dist.sample(7, 0, i, None, "test").to("cpu", DT)
        for j in range(steps + 1):
            losses[i, j] = mse(model, plain_sgd(model, theta, t.support_x, t.support_y, ALPHA, j), t.query_x, t.query_y)

    for vectorize in (True, False):
        algo = MAML(model, "regression", inner_lr=ALPHA, inner_steps=1, eval_inner_steps=steps, vectorize=vectorize)
        result = evaluate(bare_learner(algo, "maml"), theta, dist, seed=7, episodes=episodes, chunk=5)
        assert result.metric == "mse" and result.episodes == episodes
        assert [r["loss"] for r in result.curve] == pytest.approx(losses.mean(0).tolist(), rel=1e-10)
        assert result.mean == pytest.approx(float(losses[:, -1].mean()), rel=1e-10)
        assert result.ci95 == pytest.approx(1.96 * float(losses[:, -1].std()) / episodes**0.5, rel=1e-8)
        final_only = evaluate(bare_learner(algo, "maml"), theta, dist, seed=7, episodes=episodes, chunk=5, curve=False)
        assert final_only.curve == [
            {"inner_step": steps, "loss": pytest.approx(float(losses[:, -1].mean()), rel=1e-10)}
        ]
        assert (final_only.mean, final_only.ci95) == (
            pytest.approx(result.mean, rel=1e-12),
            pytest.approx(result.ci95, rel=1e-9),
        )


class _RandomImages:
    """A hand-made image task distribution: a pure function of (seed, step, index, stream)."""

    kind = "classification"
    space = None

    def sample(self, seed, step, index, space=None, stream="train"):
        return _image_task(
            torch.Generator().manual_seed(1000 * seed + 100 * step + index + (7 if stream == "test" else 0))
        )


def test_protonet_evaluate_vectorised_equals_loop_and_nearest_prototype():
    from metaserve.evaluation import evaluate

    torch.manual_seed(2)
    model = Conv4(in_channels=1, out_features=0, hidden=8, image_size=16).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    dist = _RandomImages()
    accs = []
    for i in range(6):
        t = dist.sample(0, 0, i, None, "test")
        es, eq = model_embed(model, theta, t.support_x), model_embed(model, theta, t.query_x)
        protos = torch.stack([es[t.support_y == c].mean(0) for c in range(3)])
        accs.append(float((torch.cdist(eq, protos).argmin(1) == t.query_y).to(DT).mean()))
    # the reference embeds each query set with its own batch statistics: the transductive protocol
    results = [
        evaluate(
            bare_learner(ProtoNet(model, "classification", ways=3, vectorize=v), "protonet"),
            theta,
            dist,
            seed=0,
            episodes=6,
            norm="transductive",
        )
        for v in (True, False)
    ]
    for r in results:
        assert r.metric == "acc" and len(r.curve) == 1
        assert r.mean == pytest.approx(sum(accs) / len(accs), rel=1e-12)
    assert results[0].curve[0]["loss"] == pytest.approx(results[1].curve[0]["loss"], rel=1e-10)
