"""Curriculum teachers (Shevchuk, "Teaching Your MAML"): hand-computed updates, simulated students,
config validation, and the learner integration (omega reaches every executor, resumes exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metaserve.api import as_config
from metaserve.config import ConfigError, parse_config
from metaserve.curriculum import (
    AdaptiveHyper,
    StaticState,
    Teacher,
    adaptive_init,
    adaptive_update,
    apply_omega,
    difficulty_gradient,
    make_teacher,
    static_update,
)
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.metrics import read_metrics
from metaserve.tasks.images import ImageSpace
from metaserve.tasks.sinusoid import SinusoidSpace


def one_param(**kw) -> AdaptiveHyper:
    base = dict(
        names=("x",),
        low=(0.0,),
        high=(10.0,),
        step=(2.0,),
        noise=(1.0,),
        integer=(False,),
        window=2,
        grad_threshold=0.0,
        target_loss=1.0,
    )
    return AdaptiveHyper(**{**base, **kw})


# --- adaptive teacher (IV.B, Algorithm 1) ----------------------------------------------------------
def test_adaptive_update_sequence_by_hand():
    hp = one_param()
    s = adaptive_init([5.0], [0.5], hp)
    assert (s.mean, s.omega) == ((5.0,), (5.5,))
    # 1 observation: no finite difference yet, the centre stays; next omega = 5 - 0.5
    s = adaptive_update(s, 0.4, [-0.5], hp)
    assert (s.mean, s.omega, s.last_grad) == ((5.0,), (4.5,), (0.0,))
    # d omega = -1, dL = -0.2 -> g = 0.2 > 0; L = 0.2 < target: harder, +step
    s = adaptive_update(s, 0.2, [0.25], hp)
    assert s.last_grad[0] == pytest.approx(0.2)
    assert (s.mean, s.omega) == ((7.0,), (7.25,))
    # pairs (-1, -0.2), (2.75, 0.7): g = (0.2 + 1.925) / (1 + 7.5625); L = 0.9 < 1: +2 -> 9; 9 + 1 clipped to 10
    s = adaptive_update(s, 0.9, [1.0], hp)
    assert s.last_grad[0] == pytest.approx(2.125 / 8.5625)
    assert (s.mean, s.omega) == ((9.0,), (10.0,))
    # window 2 keeps 3 observations: pairs (2.75, 0.7), (2.75, 0.6); L = 1.5 > 1: easier, -2 -> 7; 7 - 1 = 6
    s = adaptive_update(s, 1.5, [-1.0], hp)
    assert s.history_omega == ((4.5,), (7.25,), (10.0,))
    assert s.last_grad[0] == pytest.approx(3.575 / 15.125)
    assert (s.mean, s.omega) == ((7.0,), (6.0,))


def test_gradient_threshold_and_bounds():
    hp = one_param(grad_threshold=0.5, low=(4.0,), high=(6.0,))
    s = adaptive_init([5.0], [0.0], hp)
    s = adaptive_update(s, 0.0, [1.0], hp)  # omega 6
    s = adaptive_update(s, 0.3, [0.0], hp)  # g = 0.3 <= 0.5: no move
    assert s.mean == (5.0,)
    s = adaptive_update(s, 0.3 - 0.6 * 1.0, [0.0], hp)  # pairs (1, 0.3), (-1, -0.6): g = 0.45: still no move
    assert s.mean == (5.0,)
    hp2 = one_param(low=(4.0,), high=(6.0,), step=(5.0,))
    s = adaptive_update(adaptive_update(adaptive_init([5.0], [1.0], hp2), 0.9, [-1.0], hp2), 0.1, [1.0], hp2)
    assert s.mean == (6.0,) and s.omega == (5.0,)  # 5 + 5 clipped to the bound; 6 + 1 reflected off it


def test_difficulty_gradient_is_least_squares_finite_difference():
    rng = np.random.default_rng(0)
    omegas = rng.uniform(0, 5, size=(5, 2))
    losses = 0.3 * omegas[:, 0] - 0.2 * omegas[:, 1] + 7.0
    assert difficulty_gradient(omegas.tolist(), losses.tolist()) == pytest.approx([0.3, -0.2], abs=1e-12)
    # a parameter that never moved gets 0; one observation gives no estimate
    assert difficulty_gradient([[1.0, 2.0], [3.0, 2.0]], [0.0, 1.0]) == pytest.approx([0.5, 0.0])
    assert difficulty_gradient([[1.0, 2.0]], [0.0]) == [0.0, 0.0]


def sinusoid_teacher(seed: int = 0, **curriculum) -> Teacher:
    cur = {
        "teacher": "adaptive",
        "target_loss": 1.0,
        "window": 3,
        "params": {"amplitude_high": {"low": 1.0, "high": 5.0, "step": 0.5}},
        **curriculum,
    }
    config = as_config({"seed": seed, "curriculum": cur})
    return make_teacher(config.curriculum, SinusoidSpace(), seed)


def simulate(teacher: Teacher, loss_of, updates: int = 40) -> list[dict]:
    """A simulated student whose meta-validation loss is a function of the omega it trains on."""
    states = [teacher.init()]
    for _ in range(updates):
        states.append(teacher.update(states[-1], loss_of(teacher.omega(states[-1]))))
    return states


def test_adaptive_raises_difficulty_on_sustained_low_loss():
    teacher = sinusoid_teacher()
    states = simulate(teacher, lambda om: 0.1 * om["amplitude_high"])  # harder with A, always below target 1
    means = [s["mean"][0] for s in states]
    assert means[0] == 1.0 and means[-1] == 5.0
    assert all(b >= a for a, b in zip(means, means[1:]))  # never eases off a student that over-performs
    assert all(1.0 <= s["omega"][0] <= 5.0 for s in states)


def test_adaptive_lowers_difficulty_on_high_loss():
    teacher = sinusoid_teacher(params={"amplitude_high": {"low": 1.0, "high": 5.0, "start": 5.0, "step": 0.5}})
    states = simulate(teacher, lambda om: 2.0 + 0.1 * om["amplitude_high"])  # always above target 1
    means = [s["mean"][0] for s in states]
    assert means[0] == 5.0 and means[-1] == 1.0
    assert all(b <= a for a, b in zip(means, means[1:]))
    assert all(1.0 <= s["omega"][0] <= 5.0 for s in states)


def test_adaptive_settles_where_the_loss_meets_the_target():
    teacher = sinusoid_teacher(target_loss=1.5)
    states = simulate(teacher, lambda om: 0.5 * om["amplitude_high"], updates=60)  # loss = target at A = 3
    assert all(2.0 <= s["mean"][0] <= 4.0 for s in states[-20:])


def test_adaptive_teacher_is_deterministic_given_seed():
    loss = lambda om: 0.3 * om["amplitude_high"]  # noqa: E731
    a, b = simulate(sinusoid_teacher(seed=3), loss), simulate(sinusoid_teacher(seed=3), loss)
    assert a == b
    c = simulate(sinusoid_teacher(seed=4), loss)
    assert [s["omega"] for s in a] != [s["omega"] for s in c]


def test_adaptive_integer_parameters_stay_integers_in_bounds():
    config = as_config(
        {
            "task": {"name": "omniglot", "ways": 5},
            "model": {"name": "conv4"},
            "curriculum": {"teacher": "adaptive", "target_loss": 0.5, "params": {"ways": {"low": 2, "high": 5}}},
        }
    )
    teacher = make_teacher(config.curriculum, ImageSpace(5, 1, 15), 0)
    assert teacher.hp.step == (2.0,) and teacher.hp.noise == (1.0,)  # Table I's teacher gradient step 2
    states = simulate(teacher, lambda om: 0.05 * om["ways"])
    for s in states:
        space = teacher.space(s)
        assert isinstance(space.ways, int) and 2 <= space.ways <= 5 and s["omega"][0] == space.ways
    assert states[-1]["mean"] == [5.0]


# --- static teacher (IV.A) ------------------------------------------------------------------------
def test_static_advances_only_past_the_threshold():
    s, stages = StaticState(), []
    for loss in [0.6, 0.4, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0]:
        s = static_update(s, loss, thresholds=[0.5, 0.5], patience=2)
        stages.append((s.stage, s.streak))
    # 0.5 is not below 0.5: the streak resets; the last stage is kept
    assert stages == [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 0), (2, 0)]
    assert s.updates == 9 and s.last_loss == 0.0


def test_static_teacher_uses_a_threshold_per_transition():
    config = as_config(
        {
            "curriculum": {
                "teacher": "static",
                "threshold": [0.2, 1.0],
                "patience": 1,
                "stages": [{"amplitude_high": 1.0}, {"amplitude_high": 3.0}, {"amplitude_high": 5.0}],
            }
        }
    )
    teacher = make_teacher(config.curriculum, SinusoidSpace(), 0)
    s = teacher.init()
    seen = []
    for loss in [0.5, 0.1, 0.9]:
        s = teacher.update(s, loss)
        seen.append(teacher.space(s).amplitude)
    assert seen == [(0.1, 1.0), (0.1, 3.0), (0.1, 5.0)]


def test_apply_omega_sets_only_the_named_parameters():
    assert apply_omega(SinusoidSpace(), {"amplitude_high": 2.0}) == SinusoidSpace(amplitude=(0.1, 2.0))
    assert apply_omega(ImageSpace(5, 1, 15), {"ways": 2.5, "shots": 3}) == ImageSpace(3, 3, 15)
    with pytest.raises(ValueError, match="ways"):
        apply_omega(SinusoidSpace(), {"ways": 3})


# --- config validation ---------------------------------------------------------------------------
OMNI = {"task": {"name": "omniglot", "ways": 5}, "model": {"name": "conv4"}}


@pytest.mark.parametrize(
    "data, words",
    [
        ({"curriculum": {"teacher": "adaptive", "params": {"amplitude_high": {"low": 1, "high": 5}}}}, ["target_loss"]),
        ({"curriculum": {"teacher": "adaptive", "target_loss": 1}}, ["curriculum.params"]),
        ({"curriculum": {"teacher": "static", "stages": [{"amplitude_high": 1}]}}, ["curriculum.threshold"]),
        (
            {
                "curriculum": {
                    "teacher": "static",
                    "threshold": [1, 2],
                    "stages": [{"amplitude_high": 1}, {"amplitude_high": 2}],
                }
            },
            ["2 values for 2 stages"],
        ),
        (
            {"curriculum": {"teacher": "static", "threshold": 1, "stages": [{"ways": 2}]}},
            ["['ways']", "amplitude_high"],
        ),
        (
            {
                "curriculum": {
                    "teacher": "adaptive",
                    "target_loss": 1,
                    "params": {"amplitude_high": {"low": 0.01, "high": 5}},
                }
            },
            ["amplitude range [0.1, 0.01]"],
        ),
        (
            {
                "curriculum": {
                    "teacher": "adaptive",
                    "target_loss": 1,
                    "params": {"amplitude_high": {"low": 3, "high": 1}},
                }
            },
            ["low=3.0 > high=1.0"],
        ),
        (
            {
                "curriculum": {
                    "teacher": "adaptive",
                    "target_loss": 1,
                    "params": {"amplitude_high": {"low": 1, "high": 5, "stride": 1}},
                }
            },
            ["unknown config key 'curriculum.params.amplitude_high.stride'", "noise, start, step"],
        ),
        (
            {
                **OMNI,
                "curriculum": {"teacher": "adaptive", "target_loss": 1, "params": {"ways": {"low": 2, "high": 8}}},
            },
            ["ways=8.0 exceeds task.ways=5", "head"],
        ),
        (
            {
                **OMNI,
                "algorithm": {"name": "protonet"},
                "curriculum": {"teacher": "static", "threshold": 1, "stages": [{"ways": 2}, {"ways": 5}]},
            },
            ["protonet", "ways"],
        ),
        (
            {
                **OMNI,
                "curriculum": {
                    "teacher": "adaptive",
                    "target_loss": 1,
                    "params": {"ways": {"low": 2, "high": 5, "noise": 0.4}},
                },
            },
            ["integer", "noise"],
        ),
        ({"curriculum": {"teacher": "greedy"}}, ["curriculum.teacher='greedy'", "'none', 'static' or 'adaptive'"]),
    ],
)
def test_bad_curriculum_is_rejected_naming_key_and_allowed(data, words):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    for w in words:
        assert w in str(err.value)


def test_teacher_checks_its_spaces_against_the_data():
    from metaserve.curriculum import build_teacher
    from metaserve.tasks.images import ClassPool, FewShotImages

    pool = ClassPool(np.zeros((6, 4, 4, 1), np.uint8), [0, 2, 4, 6], ["a", "b", "c"])  # 3 classes of 2 images
    data = FewShotImages({"train": pool}, ImageSpace(2, 1, 1), rotations=False)
    config = as_config(
        {
            **OMNI,
            "task": {"name": "omniglot", "ways": 3, "shots": 1, "query": 1},
            "curriculum": {"teacher": "static", "threshold": 1, "stages": [{"shots": 1}, {"shots": 4}]},
        }
    )
    with pytest.raises(ValueError, match="shots\\+query=5"):
        build_teacher(config, data)


# --- in the learner -------------------------------------------------------------------------------
def tiny(tmp_path, steps=12, **curriculum) -> dict:
    return {
        "name": "cur",
        "seed": 1,
        "output_dir": str(tmp_path),
        "task": {"name": "sinusoid", "shots": 5, "query": 5},
        "model": {"name": "mlp", "hidden": [8, 8]},
        "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 1},
        "train": {
            "steps": steps,
            "meta_batch": 4,
            "log_every": 2,
            "checkpoint_every": 4,
            "val_tasks": 3,
            "dtype": "float64",
            "device": "cpu",
        },
        "eval": {"episodes": 4},
        "curriculum": curriculum,
    }


ADAPTIVE = {
    "teacher": "adaptive",
    "every": 2,
    "val_tasks": 4,
    "target_loss": 3.0,
    "window": 2,
    "params": {"amplitude_high": {"low": 0.5, "high": 5.0, "step": 1.0}},
}


def test_learner_trains_on_the_teachers_omega(tmp_path):
    cfg = as_config(
        tiny(
            tmp_path,
            steps=1,
            teacher="static",
            threshold=0.1,
            every=1,
            stages=[{"amplitude_high": 0.3, "phase_high": 0.5}, {"amplitude_high": 5.0}],
        )
    )
    cfg = as_config(cfg, ["train.log_every=1", "train.checkpoint_every=1"])
    row = read_metrics(train_loop(cfg, final_eval=False).run_dir).iloc[0]
    # independent: the pre-adaptation query MSE of the initial parameters on tasks of the stage-0 space
    learner, dist = build_learner(cfg), build_distribution(cfg)
    params, space = learner.initial_params(), SinusoidSpace(amplitude=(0.1, 0.3), phase=(0.0, 0.5))
    mses = []
    for i in range(4):
        t = dist.sample(cfg.seed, 0, i, space).to("cpu", torch.float64)
        mses.append(float(torch.mean((learner.algorithm.predict(params, t.query_x) - t.query_y) ** 2)))
    assert row["loss_pre"] == pytest.approx(sum(mses) / 4, rel=1e-12)
    assert row["omega_amplitude_high"] == 0.3 and row["teacher_stage"] == 0.0


def test_omega_columns_follow_the_teacher_and_resume_exactly(tmp_path):
    full = train_loop(as_config(tiny(tmp_path / "full", **ADAPTIVE)), final_eval=False)
    df = read_metrics(full.run_dir)
    # replay the pure teacher on the logged losses: row k trained on the omega after k-1 updates (every = log_every)
    teacher = make_teacher(as_config(tiny(tmp_path, **ADAPTIVE)).curriculum, SinusoidSpace(), 1)
    state = teacher.init()
    for _, row in df.iterrows():
        assert row["omega_amplitude_high"] == state["omega"][0]
        state = teacher.update(state, row["teacher_loss"])
    assert len(set(df["omega_amplitude_high"])) > 2  # the teacher did move omega
    # interrupted at step 8 (a checkpoint) and resumed: same parameters, teacher state and omega rows
    half = train_loop(as_config(tiny(tmp_path / "half", steps=8, **ADAPTIVE)), final_eval=False)
    resumed = train_loop(
        as_config(tiny(tmp_path / "half", **ADAPTIVE)), run_dir=half.run_dir, resume=True, final_eval=False
    )
    for k in full.params:
        assert torch.equal(resumed.params[k], full.params[k]), k
    a, b = latest_good_state(full.run_dir), latest_good_state(resumed.run_dir)  # loads with weights_only=True
    assert a["teacher"] == b["teacher"] and a["teacher"]["teacher"] == "adaptive"
    cols = ["step", "omega_amplitude_high", "teacher_mean_amplitude_high", "teacher_loss", "val_loss"]
    assert read_metrics(resumed.run_dir)[cols].equals(df[cols])


def test_ray_workers_receive_omega(ray_session, tmp_path):
    local = train_loop(as_config(tiny(tmp_path, steps=6, **ADAPTIVE)), final_eval=False)
    remote_cfg = as_config(
        tiny(tmp_path, steps=6, **ADAPTIVE),
        ["runtime.backend=ray", "runtime.num_workers=2", "runtime.cpus_per_worker=0.5"],
    )
    remote = train_loop(remote_cfg, final_eval=False)
    for k in local.params:
        torch.testing.assert_close(remote.params[k], local.params[k], rtol=1e-10, atol=1e-12)
    assert (
        read_metrics(remote.run_dir)["omega_amplitude_high"].tolist()
        == read_metrics(local.run_dir)["omega_amplitude_high"].tolist()
    )


def test_no_teacher_leaves_runs_unchanged(tmp_path):
    df = read_metrics(train_loop(as_config(tiny(tmp_path, steps=2)), final_eval=False).run_dir)
    assert not any(c.startswith(("omega_", "teacher_")) for c in df)
    assert math.isfinite(df["loss"].iloc[-1])
