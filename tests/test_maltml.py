"""MALTML (Devos & Dandi 2020), task families and the family evaluation protocol, against independent references.

References are written from the equations with plain torch ops (`functional_call`, `torch.autograd.grad`,
explicit loops over tasks), never with metaserve's helpers, in float64 so central finite differences
are accurate to ~1e-9.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metaserve import registry
from metaserve.algorithms import MALTML, MAML, MALTML2nd
from metaserve.algorithms.outer import build_outer, descent_direction
from metaserve.api import as_config, load
from metaserve.config import ConfigError, OuterSection, SinusoidTaskConfig, parse_config
from metaserve.experiment import build_distribution
from metaserve.family_eval import evaluate_families
from metaserve.models.mlp import MLP
from metaserve.runtime.loop import train_loop
from metaserve.tasks import make_distribution
from metaserve.tasks.families import AlphabetFamilies
from metaserve.tasks.images import ClassPool, FewShotImages, ImageSpace

from conftest import OMNIGLOT, ROOT, bare_learner
from faults import faulty_executor, reconfigure
from references import assert_params_close, finite_differences, relative_gap

DT = torch.float64
K, Q, L = 4, 3, 3  # shots, query points, tasks per family
ALPHA, BETA, GAMMA = 0.1, 0.2, 0.15  # large enough that the higher-order terms are far above FD noise


# --- independent references ----------------------------------------------------------------------
def mlp_and_params(hidden=(8, 8), seed=0):
    torch.manual_seed(seed)
    model = MLP(1, 1, hidden).to(DT)
    return model, {k: v.detach().clone() for k, v in model.named_parameters()}


def families(n=1, seed=0, goals=1):
    dist = make_distribution(
        SinusoidTaskConfig(name="sinusoid-families", shots=K, query=Q, tasks_per_family=L, goal_tasks=goals)
    )
    return [dist.sample(seed, 0, i).to("cpu", DT) for i in range(n)]


def mse(model, params, x, y):
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


def grads(model, params, x, y, create_graph=False):
    """grad L(params) with torch.autograd; `params` must require grad when create_graph is set."""
    leaves = params if create_graph else {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    g = torch.autograd.grad(mse(model, leaves, x, y), list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, g))


def sgd(model, theta, x, y, lr, k):
    phi = {n: t.detach().clone() for n, t in theta.items()}
    for _ in range(k):
        phi = {n: phi[n] - lr * g for n, g in grads(model, phi, x, y).items()}
    return phi


def hand_maltml(model, theta, family, meta_learner, k, m, alpha=ALPHA, beta=BETA):
    """m nested meta-steps over the family's L tasks, written as loops (means over tasks)."""
    th = {n: t.clone() for n, t in theta.items()}
    for _ in range(m):
        steps = []
        for i in range(L):
            sx, sy = family.support_x[i, :K], family.support_y[i, :K]
            qx, qy = family.support_x[i, K:], family.support_y[i, K:]
            phi = sgd(model, th, sx, sy, alpha, k)
            if meta_learner == "fomaml":
                steps.append({n: -beta * g for n, g in grads(model, phi, qx, qy).items()})
            else:
                steps.append({n: beta * (phi[n] - th[n]) for n in th})
        th = {n: th[n] + sum(s[n] for s in steps) / L for n in th}
    return th


def objective_2nd(model, theta, family, through_meta_step=True, third_order=True):
    """Algorithm 1 with single steps, written with torch.autograd (create_graph) from the equations.

    The family meta-gradient is g = mean_i (I - alpha H_S_i(theta)) grad L_Q_i(phi_i). Variants for the
    checks: `through_meta_step=False` holds g constant (theta' = theta - beta * const);
    `third_order=False` holds the Hessian's argument constant, dropping only d H_S / d theta.
    """
    p = {n: t if t.requires_grad else t.detach().clone().requires_grad_(True) for n, t in theta.items()}
    frozen = {
        n: t.detach().clone().requires_grad_(True) for n, t in p.items()
    }  # H_S evaluated here, not differentiated
    meta_grad = {n: 0.0 for n in p}
    for i in range(L):
        sx, sy, qx, qy = (
            family.support_x[i, :K],
            family.support_y[i, :K],
            family.support_x[i, K:],
            family.support_y[i, K:],
        )
        g_s = grads(model, p, sx, sy, create_graph=True)
        phi = {n: p[n] - ALPHA * g_s[n] for n in p}
        v = torch.autograd.grad(mse(model, phi, qx, qy), list(phi.values()), create_graph=True)
        # H_S v as the gradient of g_S(at) . v with respect to `at` alone: a copy of p (v depends on p, not on it)
        at = {n: t.clone() for n, t in p.items()} if third_order else frozen
        g_at = grads(model, at, sx, sy, create_graph=True)
        hv = torch.autograd.grad(sum((g_at[n] * vn).sum() for n, vn in zip(p, v)), list(at.values()), create_graph=True)
        for n, vn, hn in zip(p, v, hv):
            meta_grad[n] = meta_grad[n] + (vn - ALPHA * hn) / L
    theta1 = {n: p[n] - BETA * (meta_grad[n] if through_meta_step else meta_grad[n].detach()) for n in p}
    gx, gy = family.query_x[0, :K], family.query_y[0, :K]
    g = torch.autograd.grad(mse(model, theta1, gx, gy), list(theta1.values()), create_graph=True)
    theta2 = {n: theta1[n] - GAMMA * gn for n, gn in zip(theta1, g)}
    return mse(model, theta2, family.query_x[0, K:], family.query_y[0, K:])


def maltml(model, meta_learner="fomaml", k=2, m=3, vectorize=False, lrs=(ALPHA, BETA, GAMMA)):
    return MALTML(
        model,
        "regression",
        meta_learner=meta_learner,
        task_steps=k,
        meta_steps=m,
        split=K,
        task_lr=lrs[0],
        meta_lr=lrs[1],
        finetune_lr=lrs[2],
        finetune_steps=2,
        vectorize=vectorize,
    )


# --- first-order maltml --------------------------------------------------------------------------
@pytest.mark.parametrize("meta_learner", ["fomaml", "reptile"])
@pytest.mark.parametrize("vectorize", [False, True])
def test_maltml_contribution_is_nested_meta_steps_by_hand(meta_learner, vectorize):
    model, theta = mlp_and_params()
    family = families()[0]
    got = maltml(model, meta_learner, vectorize=vectorize).task_update(theta, family)
    want = hand_maltml(model, theta, family, meta_learner, k=2, m=3)
    assert_params_close(got.contribution, {n: want[n] - theta[n] for n in theta}, rtol=1e-9, atol=1e-12)
    # metrics: the goal task's evaluation MSE at theta and at theta'_j
    gx, gy = family.query_x[0, K:], family.query_y[0, K:]
    assert got.metrics["loss_pre"] == pytest.approx(float(mse(model, theta, gx, gy)), rel=1e-10)
    assert got.metrics["loss"] == pytest.approx(float(mse(model, want, gx, gy)), rel=1e-9)


def test_maltml_outer_step_moves_toward_the_meta_finetuned_parameters():
    """theta <- theta + eta mean_j (theta'_j - theta): the mean over the family batch (the paper sums; eta
    absorbs it)."""
    model, theta = mlp_and_params()
    eta = 0.5
    algo = maltml(model, "reptile", vectorize=True)
    batch = families(3, seed=4)
    update = algo.batch_update(theta, batch)
    opt = build_outer(OuterSection(optimizer="sgd", lr=eta))
    mean = descent_direction(registry.entry("maltml").contribution, update.mean_contribution())
    new, _ = opt.update(theta, mean, opt.init(theta))
    targets = [hand_maltml(model, theta, f, "reptile", k=2, m=3) for f in batch]
    want = {n: theta[n] + eta * sum(t[n] - theta[n] for t in targets) / 3 for n in theta}
    assert_params_close(new, want, rtol=1e-9, atol=1e-12)


# --- second-order maltml -------------------------------------------------------------------------
def test_maltml_2nd_gradient_matches_finite_differences():
    model, theta = mlp_and_params(hidden=(6, 6))
    family = families(seed=2)[0]
    algo = MALTML2nd(
        model, "regression", split=K, task_lr=ALPHA, meta_lr=BETA, finetune_lr=GAMMA, finetune_steps=1, vectorize=False
    )
    got = algo.task_update(theta, family)
    want = finite_differences(lambda p: objective_2nd(model, p, family), theta)
    assert_params_close(got.contribution, want, rtol=1e-5, atol=1e-8)
    assert got.metrics["loss"] == pytest.approx(float(objective_2nd(model, theta, family).detach()), rel=1e-10)
    # The test can tell the exact gradient from its approximations: holding the family meta-step
    # constant, or only dropping the third-order term alpha * (d H_S / d theta) v, is measurably off.
    for variant in ({"through_meta_step": False}, {"third_order": False}):
        leaves = {n: t.clone().requires_grad_(True) for n, t in theta.items()}
        approx = dict(
            zip(leaves, torch.autograd.grad(objective_2nd(model, leaves, family, **variant), list(leaves.values())))
        )
        assert relative_gap(approx, want) > 1e-3, variant
    # vmapped over the L tasks: the same gradient
    vec = MALTML2nd(
        model, "regression", split=K, task_lr=ALPHA, meta_lr=BETA, finetune_lr=GAMMA, finetune_steps=1, vectorize=True
    ).task_update(theta, family)
    assert_params_close(vec.contribution, got.contribution, rtol=1e-9, atol=1e-12)


# --- family tasks --------------------------------------------------------------------------------
_SAMPLE = textwrap.dedent("""
    import sys, torch
    from metaserve.config import SinusoidTaskConfig, parse_config
    from metaserve.tasks import make_distribution
    dist = make_distribution(SinusoidTaskConfig(name="sinusoid-families", shots=5, query=5, tasks_per_family=5))
    fields = ("support_x", "support_y", "query_x", "query_y")
    out = {f"{i}.{f}": getattr(dist.sample(3, 7, i), f) for i in (2, 3) for f in fields}
    torch.save(out, sys.argv[1])
""")


def test_same_family_in_another_process(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "7",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    subprocess.run(
        [sys.executable, "-c", _SAMPLE, str(tmp_path / "a.pt")], env=env, cwd=tmp_path, check=True, timeout=180
    )
    there = torch.load(tmp_path / "a.pt")
    dist = make_distribution(SinusoidTaskConfig(name="sinusoid-families", shots=5, query=5, tasks_per_family=5))
    for i in (2, 3):
        here = dist.sample(3, 7, i)
        for f in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(here, f), there[f"{i}.{f}"]), (i, f)
    assert not torch.equal(there["2.support_y"], there["3.support_y"])
    assert list(here.support_x.shape) == [5, 10, 1] and list(here.query_x.shape) == [1, 10, 1]


def _amplitude_phase(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """A, phi of y = A sin(x - phi) = (A cos phi) sin x - (A sin phi) cos x, by least squares."""
    (a, b), *_ = np.linalg.lstsq(np.stack([np.sin(x), np.cos(x)], 1), y, rcond=None)
    return float(np.hypot(a, b)), float(np.arctan2(-b, a))


def test_sinusoid_family_shares_its_phase_and_draws_amplitudes_per_task():
    cfg = SinusoidTaskConfig(name="sinusoid-families", shots=5, query=5, tasks_per_family=4, goal_tasks=2, oracle=True)
    dist = make_distribution(cfg)
    phases = []
    for index in range(3):
        fam = dist.sample(0, 0, index).to("cpu", DT)
        rows = [(fam.support_x[i], fam.support_y[i]) for i in range(4)] + [
            (fam.query_x[g], fam.query_y[g]) for g in range(2)
        ]
        fitted = [_amplitude_phase(x[:, 0].numpy(), y[:, 0].numpy()) for x, y in rows]
        for (amp, phase), (x, _) in zip(fitted, rows):
            assert 0.1 <= amp <= 5.0 and 0.0 <= phase <= np.pi
            # the oracle columns carry the task's true amplitude and phase
            assert torch.all(x[:, 1] == x[0, 1]) and float(x[0, 1]) == pytest.approx(amp, rel=1e-4)
            assert float(x[0, 2]) == pytest.approx(phase, abs=1e-4)
        assert max(p for _, p in fitted) - min(p for _, p in fitted) < 1e-4  # one phase per family
        assert len({round(a, 3) for a, _ in fitted}) == 6  # an amplitude per task
        phases.append(fitted[0][1])
    assert len({round(p, 3) for p in phases}) == 3
    single = make_distribution(cfg.model_copy(update={"unit": "task"})).sample(0, 0, 0)
    assert list(single.support_x.shape) == [5, 3] and list(single.query_x.shape) == [5, 3]


def _alphabet_pool(sizes: dict[str, int]) -> ClassPool:
    """Classes '<alphabet>/cNN' with 6 images each whose pixels all hold the class index."""
    names = [f"{a}/c{i:02d}" for a, n in sizes.items() for i in range(n)]
    return ClassPool.from_classes(names, [np.full((6, 4, 4, 1), i, np.uint8) for i in range(len(names))])


def test_omniglot_family_draws_every_task_from_one_alphabet():
    sizes = {"Alpha": 4, "Beta": 5, "Gamma": 3}
    pool = _alphabet_pool(sizes)
    alphabet_of = {i: n.split("/")[0] for i, n in enumerate(pool.class_names)}
    images = FewShotImages({"train": pool}, ImageSpace(ways=3, shots=1, query=2), rotations=False)
    dist = AlphabetFamilies(images, tasks_per_family=4, goal_tasks=1)
    seen = set()
    for index in range(12):
        fam = dist.sample(5, 1, index)
        assert list(fam.support_x.shape) == [4, 9, 1, 4, 4] and list(fam.query_x.shape) == [1, 9, 1, 4, 4]
        classes = torch.cat([fam.support_x, fam.query_x]).mul(255).round()[..., 0, 0, 0]  # [tasks, examples]
        labels = torch.cat([fam.support_y, fam.query_y])
        assert len({alphabet_of[int(c)] for c in classes.flatten()}) == 1
        seen.add(alphabet_of[int(classes[0, 0])])
        for t in range(5):  # within a task, a label always means the same class, and 3 distinct classes
            assert len({(int(lab), int(c)) for lab, c in zip(labels[t], classes[t])}) == 3
        assert torch.equal(fam.support_x, dist.sample(5, 1, index).support_x)
    assert seen == set(sizes)
    with pytest.raises(ValueError, match="alphabet 'Gamma' of split 'train' has only 3 classes"):
        AlphabetFamilies(FewShotImages({"train": pool}, ImageSpace(ways=4, shots=1, query=2), rotations=False), 2, 1)


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data,message",
    [
        ({"algorithm": {"name": "maltml"}}, "algorithm.name='maltml' learns from task families"),
        (
            {"task": {"name": "sinusoid-families", "unit": "task"}, "algorithm": {"name": "maltml-2nd"}},
            "set task.unit='family'",
        ),
        ({"task": {"name": "sinusoid-families"}, "algorithm": {"name": "maml"}}, "set task.unit='task'"),
        (
            {"task": {"name": "sinusoid-families"}, "algorithm": {"name": "maltml", "meta_steps": 1}},
            "algorithm.meta_steps=1",
        ),
        (
            {"task": {"name": "sinusoid-families"}, "algorithm": {"name": "maltml-2nd", "meta_steps": 3}},
            "unknown config key 'algorithm.meta_steps'",
        ),
    ],
)
def test_family_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


# --- evaluation protocol -------------------------------------------------------------------------
def test_family_evaluation_matches_hand_written_protocol():
    """Meta-finetune on the L tasks (maltml only), s SGD steps on the goal's K examples, goal MSE, 1.96 std/sqrt(n)."""
    model, theta = mlp_and_params(hidden=(6,))
    dist = make_distribution(SinusoidTaskConfig(name="sinusoid-families", shots=K, query=Q, tasks_per_family=L))
    n, steps = 5, 2
    lrs = alpha, beta, gamma = 0.02, 0.05, 0.03  # small: the finetuning of an untrained model stays finite
    maml = MAML(model, "regression", inner_lr=gamma, inner_steps=1)
    for algo, name in ((maltml(model, "fomaml", vectorize=True, lrs=lrs), "maltml"), (maml, "maml")):
        losses = torch.zeros(n, steps + 1, dtype=DT)
        for i in range(n):
            fam = dist.sample(9, 0, i, None, "test").to("cpu", DT)
            start = (
                hand_maltml(model, theta, fam, "fomaml", k=2, m=3, alpha=alpha, beta=beta)
                if algo is not maml
                else theta
            )
            for s in range(steps + 1):
                losses[i, s] = mse(
                    model,
                    sgd(model, start, fam.query_x[0, :K], fam.query_y[0, :K], gamma, s),
                    fam.query_x[0, K:],
                    fam.query_y[0, K:],
                )
        got = evaluate_families(
            bare_learner(algo, name), theta, dist, seed=9, split=K, families=n, steps=steps, chunk=2
        )
        assert got.metric == "mse" and got.families == n
        assert [r["mean"] for r in got.curve] == pytest.approx(losses.mean(0).tolist(), rel=1e-9)
        assert [r["ci95"] for r in got.curve] == pytest.approx((1.96 * losses.std(0) / n**0.5).tolist(), rel=1e-7)


# --- end to end ----------------------------------------------------------------------------------
def tiny_family_config(tmp_path, algorithm: dict, **runtime) -> object:
    return as_config(
        {
            "name": "fam",
            "seed": 1,
            "output_dir": str(tmp_path),
            "task": {"name": "sinusoid-families", "shots": K, "query": Q, "tasks_per_family": L},
            "model": {"name": "mlp", "hidden": [8, 8]},
            "algorithm": {"task_lr": ALPHA, "meta_lr": BETA, **algorithm},
            "train": {
                "steps": 4,
                "meta_batch": 5,
                "log_every": 2,
                "checkpoint_every": 4,
                "val_tasks": 0,
                "dtype": "float64",
                "device": "cpu",
            },
            "eval": {"episodes": 20},
            "runtime": {"num_workers": 2, "cpus_per_worker": 1, **runtime},
        }
    )


def test_maltml_run_evaluates_and_loads_as_a_meta_model(tmp_path):
    config = tiny_family_config(tmp_path, {"name": "maltml", "meta_steps": 2, "finetune_steps": 3})
    result = train_loop(config)
    assert result.test.metric == "mse" and np.isfinite(result.test.mean) and len(result.test.curve) == 1
    model = load(result.run_dir)
    fam = build_distribution(config).sample(1, 0, 0, None, "test").to("cpu", DT)
    meta_finetuned = model.adapt(fam.support_x, fam.support_y)  # the L tasks -> theta'_j
    want = hand_maltml(model.learner.algorithm.model, model.params, fam, "fomaml", k=1, m=2)
    assert_params_close(meta_finetuned.params, want, rtol=1e-9, atol=1e-12)
    goal = type(model)(model.learner, meta_finetuned.params, model.step).adapt(fam.query_x[0, :K], fam.query_y[0, :K])
    assert goal.predict(fam.query_x[0, K:]).shape == (Q, 1)


def test_ray_backend_equals_local_for_maltml_and_a_metric_learner(ray_session, tmp_path):

    configs = [tiny_family_config(tmp_path, {"name": "maltml", "meta_steps": 2})]
    if OMNIGLOT.is_dir():
        configs.append(
            as_config(
                {
                    "name": "rel",
                    "seed": 2,
                    "output_dir": str(tmp_path),
                    "task": {
                        "name": "omniglot",
                        "root": str(OMNIGLOT),
                        "ways": 3,
                        "shots": 1,
                        "query": 2,
                        "image_size": 16,
                        "cache_dir": str(tmp_path / "cache"),
                    },
                    "model": {"name": "conv4", "hidden": 8},
                    "algorithm": {"name": "relation"},
                    "train": {
                        "steps": 2,
                        "meta_batch": 3,
                        "log_every": 2,
                        "checkpoint_every": 2,
                        "val_tasks": 0,
                        "dtype": "float64",
                        "device": "cpu",
                    },
                    "runtime": {"num_workers": 2, "cpus_per_worker": 1},
                }
            )
        )
    executor = faulty_executor(as_config(configs[0], ["runtime.backend=ray"]))
    try:
        for config in configs:
            reference = train_loop(config, final_eval=False).params
            ray_config = as_config(config, ["runtime.backend=ray"])
            reconfigure(executor, ray_config)
            got = train_loop(ray_config, final_eval=False, executor=executor).params
            for k in reference:
                torch.testing.assert_close(
                    got[k], reference[k], rtol=1e-10, atol=1e-12, msg=f"{config.algorithm.name} {k}"
                )
    finally:
        executor.close()
