"""Lazy teacher-student MAML / Reptile against closed forms, MAML, finite differences, and in memory.

On a linear model with squared loss everything is closed form: L_S(w) = mean((Xs w - ys)^2) has the
constant Hessian H_S = 2 Xs^T Xs / n and gradient H_S w - b_S with b_S = 2 Xs^T ys / n, so the
student's iterates are phi_j = w* + (I - alpha H_S)^j (theta - w*), w* = H_S^{-1} b_S, and
sum_{j<k} H_S(phi_j) v = k H_S v.
"""

from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

from metaserve.algorithms import MAML, LazyMAML, LazyReptile
from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.models.mlp import MLP
from metaserve.runtime.loop import train_loop
from metaserve.store.metrics import read_metrics
from metaserve.tasks.base import Task
from metaserve.tasks.sinusoid import Sinusoid

DT = torch.float64
D, N = 4, 12  # input dimension, points per set
ROOT = Path(__file__).resolve().parents[1]


# --- the quadratic problem -----------------------------------------------------------------------
def linear_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(D, 1, bias=False).to(DT)
    theta = {"weight": torch.randn(1, D, generator=gen, dtype=DT)}
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=DT)  # noqa: E731
    task = Task(rand(N, D), rand(N, 1), rand(N, D), rand(N, 1))
    return model, theta, task


def quadratic(x, y):
    """(H, b) with L(w) = mean((x w - y)^2): grad L = H w - b, H = 2 x^T x / n, b = 2 x^T y / n."""
    n = x.shape[0]
    return 2 * x.T @ x / n, 2 * x.T @ y / n


def closed_form_teacher(theta_col, task, alpha, k, gamma, target):
    """theta_T from the explicit iterates phi_j = w* + (I - alpha H)^j (theta - w*)."""
    h, b = quadratic(task.support_x, task.support_y)
    w_star = torch.linalg.solve(h, b)
    contraction = torch.eye(D, dtype=DT) - alpha * h
    phis = [w_star + torch.linalg.matrix_power(contraction, j) @ (theta_col - w_star) for j in range(1, k + 1)]
    phi = phis[-1] if target == "last" else sum(phis) / k
    return theta_col + gamma * (phi - theta_col)


CASES = [(1, 1.0, "last"), (5, 0.5, "last"), (5, 0.7, "mean"), (20, 1.0, "mean"), (20, 0.3, "last")]


@pytest.mark.parametrize("k,gamma,target", CASES)
def test_teacher_leap_matches_closed_form_iterates(k, gamma, target):
    model, theta, task = linear_problem()
    alpha = 0.1
    lazy = LazyMAML(model, "regression", inner_lr=alpha, inner_steps=k, leap=gamma, leap_target=target)
    want = closed_form_teacher(theta["weight"].T, task, alpha, k, gamma, target)
    got = lazy.teacher(theta, task.support_x, task.support_y)["weight"].T
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("k,gamma,target", CASES)
def test_linearised_meta_gradient_matches_closed_form(k, gamma, target):
    model, theta, task = linear_problem(seed=1)
    alpha = 0.1
    lazy = LazyMAML(
        model, "regression", inner_lr=alpha, inner_steps=k, leap=gamma, leap_target=target, meta_gradient="linearised"
    )
    theta_t = closed_form_teacher(theta["weight"].T, task, alpha, k, gamma, target)
    h_s, _ = quadratic(task.support_x, task.support_y)
    h_q, b_q = quadratic(task.query_x, task.query_y)
    v = h_q @ theta_t - b_q  # grad L_Q(theta_T)
    want = v - gamma * alpha * k * (h_s @ v)

    update = lazy.task_update(theta, task)
    torch.testing.assert_close(update.contribution["weight"].T, want, rtol=1e-10, atol=1e-12)
    query_loss = float(((task.query_x @ theta_t - task.query_y) ** 2).mean())
    assert update.metrics["loss"] == pytest.approx(query_loss, rel=1e-10)


@pytest.mark.parametrize("k,gamma,target", CASES)
def test_lazy_reptile_contribution_is_the_leap(k, gamma, target):
    model, theta, task = linear_problem(seed=2)
    alpha = 0.1
    reptile = LazyReptile(model, "regression", inner_lr=alpha, inner_steps=k, leap=gamma, leap_target=target)
    want = closed_form_teacher(theta["weight"].T, task, alpha, k, gamma, target) - theta["weight"].T
    got = reptile.task_update(theta, task).contribution["weight"].T
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(leap_target="first"), "leap_target='first'"),
        (dict(meta_gradient="second"), "meta_gradient='second'"),
        (dict(inner_steps=0), "inner_steps=0"),
        (dict(leap=1.5), "leap=1.5"),
    ],
)
def test_bad_constructor_values_are_rejected(bad, match):
    kwargs = dict(inner_lr=0.1, inner_steps=1) | bad
    with pytest.raises(ValueError, match=match):
        LazyMAML(nn.Linear(2, 1), "regression", **kwargs)


# --- k = 1, gamma = 1: lazy-maml is MAML ---------------------------------------------------------
def mse(model, params, x, y):
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


def one_step_query_loss(model, theta, task, alpha):
    """L_Q(theta - alpha grad L_S(theta)), by hand, without keeping a graph."""
    leaves = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    grads = torch.autograd.grad(mse(model, leaves, task.support_x, task.support_y), list(leaves.values()))
    phi = {n: (leaves[n] - alpha * g).detach() for n, g in zip(leaves, grads)}
    return float(mse(model, phi, task.query_x, task.query_y))


def test_one_step_full_leap_equals_maml_and_finite_differences():
    torch.manual_seed(0)
    model = MLP(1, 1, (8, 8)).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    task = Sinusoid().sample(0, 0, 4).to("cpu", DT)
    alpha = 0.1
    lazy = LazyMAML(
        model, "regression", inner_lr=alpha, inner_steps=1, leap=1.0, vectorize=False, meta_gradient="linearised"
    )
    maml = MAML(model, "regression", inner_lr=alpha, inner_steps=1, vectorize=False)
    got = lazy.task_update(theta, task).contribution
    ref = maml.task_update(theta, task).contribution
    for name in theta:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-10)

    # and the independent value: directional derivatives along random unit vectors by central differences
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(6):
        u = {n: torch.randn(t.shape, generator=gen, dtype=DT) for n, t in theta.items()}
        norm = sum(float((x**2).sum()) for x in u.values()) ** 0.5
        u = {n: x / norm for n, x in u.items()}
        plus = {n: theta[n] + eps * u[n] for n in theta}
        minus = {n: theta[n] - eps * u[n] for n in theta}
        fd = (one_step_query_loss(model, plus, task, alpha) - one_step_query_loss(model, minus, task, alpha)) / (
            2 * eps
        )
        analytic = sum(float((got[n] * u[n]).sum()) for n in theta)
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


# --- memory does not grow with k ----------------------------------------------------------------
def peak_allocated_bytes(fn) -> int:
    """Peak of live CPU-allocator bytes during fn(), from the profiler's allocation/free events.

    The profiler records every allocation (+nbytes) and free (-nbytes) made by torch's CPU allocator;
    their running sum in time order is the bytes live beyond what existed before fn() ran.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_lazy_maml_memory_does_not_grow_with_inner_steps():
    torch.manual_seed(0)
    model = MLP(1, 1, (256, 256)).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    x = lambda: torch.rand(50, 1, generator=gen, dtype=DT) * 10 - 5  # noqa: E731
    task = Task(x(), torch.sin(x()), x(), torch.sin(x()))

    def peak(cls, k):
        algo = cls(model, "regression", inner_lr=0.01, inner_steps=k, vectorize=False)
        return peak_allocated_bytes(lambda: algo.task_update(theta, task))

    peak(LazyMAML, 1), peak(MAML, 1)  # warm-up: one-time allocations of torch.func are not the method's
    lazy5, lazy50 = peak(LazyMAML, 5), peak(LazyMAML, 50)
    maml5, maml50 = peak(MAML, 5), peak(MAML, 50)
    params_bytes = sum(v.numel() * v.element_size() for v in theta.values())
    assert lazy5 > params_bytes  # the measurement sees the method's tensors at all
    # second-order MAML keeps every inner step's graph: the measurement detects growth with k ...
    assert maml50 > 3 * maml5, (maml5, maml50)
    # ... and lazy-maml keeps no activations per step: the exact form grows only by its parameter-sized
    # checkpoints (ceil(k/s) + s with s = ceil(sqrt(k)): 5 copies at k = 5, 15 at k = 50), the linearised not at all.
    assert lazy50 - lazy5 <= (15 - 5 + 2) * params_bytes, (lazy5, lazy50, params_bytes)
    assert maml50 - maml5 > 10 * (lazy50 - lazy5), (maml5, maml50, lazy5, lazy50)
    linearised = partial(LazyMAML, meta_gradient="linearised")
    linear5, linear50 = peak(linearised, 5), peak(linearised, 50)
    assert linear50 <= 1.3 * linear5, (linear5, linear50)


# --- the exact meta-gradient (lazy.py eq. 4-5) against autograd through the unrolled loop -----------
def unrolled_meta_gradient(model, theta, task, alpha, k, gamma, target):
    """d L_Q(theta_T(theta)) / d theta by torch.autograd through k explicitly unrolled SGD steps (float64)."""
    leaves = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
    phi, iterates = leaves, []
    for _ in range(k):
        support_loss = mse(model, phi, task.support_x, task.support_y)
        grads = torch.autograd.grad(support_loss, list(phi.values()), create_graph=True)
        phi = {n: phi[n] - alpha * g for n, g in zip(phi, grads)}
        iterates.append(phi)
    leap_to = iterates[-1] if target == "last" else {n: sum(it[n] for it in iterates) / k for n in leaves}
    theta_t = {n: leaves[n] + gamma * (leap_to[n] - leaves[n]) for n in leaves}
    grads = torch.autograd.grad(mse(model, theta_t, task.query_x, task.query_y), list(leaves.values()))
    return dict(zip(leaves, grads))


def sinusoid_problem(n_tasks=2):
    torch.manual_seed(0)
    model = MLP(1, 1, (8, 8)).to(DT)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, theta, [Sinusoid().sample(0, 0, i).to("cpu", DT) for i in range(n_tasks)]


@pytest.mark.parametrize("target", ["last", "mean"])
@pytest.mark.parametrize("gamma", [0.5, 1.0])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_exact_meta_gradient_matches_unrolled_autograd(k, gamma, target):
    model, theta, tasks = sinusoid_problem()
    alpha = 0.05
    lazy = LazyMAML(model, "regression", inner_lr=alpha, inner_steps=k, leap=gamma, leap_target=target)
    refs = [unrolled_meta_gradient(model, theta, t, alpha, k, gamma, target) for t in tasks]
    got = lazy.batch_update(theta, tasks).contribution  # vmapped over the two tasks: the sum of their contributions
    for name in theta:
        torch.testing.assert_close(got[name], refs[0][name] + refs[1][name], rtol=1e-9, atol=1e-11)
    looped = lazy.task_update(theta, tasks[0]).contribution
    for name in theta:
        torch.testing.assert_close(looped[name], refs[0][name], rtol=1e-9, atol=1e-11)


def teacher_query_loss(model, theta, task, alpha, k, gamma, target):
    """L_Q(theta_T) with the student run by hand, no graph (for finite differences)."""
    phi, iterates = theta, []
    for _ in range(k):
        leaves = {n: t.clone().requires_grad_(True) for n, t in phi.items()}
        grads = torch.autograd.grad(mse(model, leaves, task.support_x, task.support_y), list(leaves.values()))
        phi = {n: (phi[n] - alpha * g).detach() for n, g in zip(phi, grads)}
        iterates.append(phi)
    leap_to = iterates[-1] if target == "last" else {n: sum(it[n] for it in iterates) / k for n in theta}
    return float(mse(model, {n: theta[n] + gamma * (leap_to[n] - theta[n]) for n in theta}, task.query_x, task.query_y))


@pytest.mark.parametrize("target", ["last", "mean"])
def test_exact_meta_gradient_matches_central_differences_at_k10(target):
    model, theta, tasks = sinusoid_problem(1)
    alpha, k, gamma = 0.05, 10, 0.5
    lazy = LazyMAML(model, "regression", inner_lr=alpha, inner_steps=k, leap=gamma, leap_target=target, vectorize=False)
    got = lazy.task_update(theta, tasks[0]).contribution
    gen, eps = torch.Generator().manual_seed(1), 1e-6
    for _ in range(4):
        u = {n: torch.randn(t.shape, generator=gen, dtype=DT) for n, t in theta.items()}

        def f(s):
            return teacher_query_loss(model, {n: theta[n] + s * u[n] for n in theta}, tasks[0], alpha, k, gamma, target)

        fd = (f(eps) - f(-eps)) / (2 * eps)
        assert sum(float((got[n] * u[n]).sum()) for n in theta) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("k", [1, 5])
def test_exact_full_leap_equals_second_order_maml(k):
    model, theta, tasks = sinusoid_problem()
    alpha = 0.05
    lazy = LazyMAML(model, "regression", inner_lr=alpha, inner_steps=k, leap=1.0)
    maml = MAML(model, "regression", inner_lr=alpha, inner_steps=k)
    got, want = lazy.batch_update(theta, tasks), maml.batch_update(theta, tasks)
    for name in theta:
        torch.testing.assert_close(got.contribution[name], want.contribution[name], rtol=1e-10, atol=1e-12)
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-10)


def test_linearised_and_exact_differ_beyond_one_step():
    """The two modes are different maths past k = 1 (so the config choice matters), and agree at k = 1."""
    model, theta, tasks = sinusoid_problem(1)
    grads = {}
    for k in (1, 5):
        for mode in ("exact", "linearised"):
            algo = LazyMAML(model, "regression", inner_lr=0.05, inner_steps=k, leap=0.5, meta_gradient=mode)
            grads[k, mode] = algo.task_update(theta, tasks[0]).contribution
    for name in theta:
        torch.testing.assert_close(grads[1, "exact"][name], grads[1, "linearised"][name], rtol=1e-10, atol=1e-12)
    gap = sum(float((grads[5, "exact"][n] - grads[5, "linearised"][n]).abs().sum()) for n in theta)
    assert gap > 1e-6


# --- config validation and the shipped long-horizon config ------------------------------------------
@pytest.mark.parametrize(
    "override,named",
    [
        ("algorithm.inner_steps=0", "inner_steps=0"),
        ("algorithm.leap=1.5", "leap=1.5"),
        ("algorithm.leap=0", "leap=0"),
        ("algorithm.meta_gradient=second", "meta_gradient='second'"),
    ],
)
def test_bad_lazy_config_values_are_named(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        as_config(str(ROOT / "configs/sinusoid-lazy-maml.yaml"), [override])


def test_shipped_long_horizon_sinusoid_config_trains(tmp_path):
    config = as_config(
        str(ROOT / "configs/sinusoid-lazy-maml.yaml"),
        [
            "train.steps=60",
            "train.log_every=20",
            "train.checkpoint_every=60",
            "train.val_tasks=20",
            "train.meta_batch=5",
            f"output_dir={tmp_path}",
        ],
    )
    assert config.algorithm.inner_steps >= 20 and config.algorithm.meta_gradient == "exact"
    result = train_loop(config, final_eval=False, tensorboard=False)
    rows = read_metrics(result.run_dir)
    assert all(torch.isfinite(v).all() for v in result.params.values())
    assert rows["val_loss"].notna().all() and (rows["val_loss"] < 1e6).all()
    val = rows["val_loss"].tolist()  # steps 20, 40, 60 (3.64, 3.47, 3.25 when written)
    assert all(later < earlier for earlier, later in zip(val, val[1:])) and val[-1] < 0.95 * val[0], val


# --- the linearised form's safety warning -----------------------------------------------------------
def test_support_curvature_is_the_hessians_largest_eigenvalue():
    model, theta, tasks = sinusoid_problem(1)
    lazy = LazyMAML(model, "regression", inner_lr=0.05, inner_steps=3)
    names, shapes = list(theta), [t.shape for t in theta.values()]
    sizes = [t.numel() for t in theta.values()]

    def flat_loss(w):
        parts = dict(zip(names, (c.view(s) for c, s in zip(torch.split(w, sizes), shapes))))
        return mse(model, parts, tasks[0].support_x, tasks[0].support_y)

    hessian = torch.autograd.functional.hessian(flat_loss, torch.cat([t.reshape(-1) for t in theta.values()]))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    want = float(eigenvalues[eigenvalues.abs().argmax()])
    got = lazy.support_curvature(theta, tasks[0].support_x, tasks[0].support_y, iterations=200)
    assert got == pytest.approx(want, rel=1e-4)


def test_linearised_mode_warns_once_when_alpha_k_curvature_is_unsafe():
    model, theta, tasks = sinusoid_problem(1)
    lam = abs(
        LazyMAML(model, "regression", inner_lr=0.05, inner_steps=1).support_curvature(
            theta, tasks[0].support_x, tasks[0].support_y
        )
    )
    unsafe_k = int(3.0 / (0.05 * lam)) + 1  # alpha * k * lambda ~ 3 > 2
    risky = LazyMAML(model, "regression", inner_lr=0.05, inner_steps=unsafe_k, meta_gradient="linearised")
    with pytest.warns(UserWarning, match="alpha \\* k \\* lambda_max"):
        risky.task_update(theta, tasks[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        risky.task_update(theta, tasks[0])  # once per algorithm, not per step
        LazyMAML(model, "regression", inner_lr=0.05, inner_steps=unsafe_k).task_update(theta, tasks[0])
        safe_k = max(1, int(1.0 / (0.05 * lam)))  # alpha * k * lambda <= 1
        LazyMAML(model, "regression", inner_lr=0.05, inner_steps=safe_k, meta_gradient="linearised").task_update(
            theta, tasks[0]
        )
