"""End-to-end: task determinism, reproducible and resumable runs, learning, config validation, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import metaserve
from metaserve.config import ConfigError, apply_overrides, load_config, parse_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.loop import train_loop
from metaserve.store.metrics import read_metrics

from references import tensorboard_events, tensorboard_scalars

ROOT = Path(__file__).resolve().parents[1]
# One intra-op thread in child processes too: the test machine's 2 cores are shared.
CHILD_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


def tiny_config(tmp: Path, **train) -> dict:
    """A few-second sinusoid MAML run in float64."""
    return {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp),
        "model": {"name": "mlp", "hidden": [16, 16]},
        "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 2, "outer": {"optimizer": "adam", "lr": 1e-3}},
        "train": {
            "steps": 20,
            "meta_batch": 4,
            "log_every": 10,
            "checkpoint_every": 20,
            "val_tasks": 3,
            "dtype": "float64",
            **train,
        },
        "eval": {"episodes": 5},
    }


def assert_params_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- tasks are a pure function of (seed, stream, step, index) ------------------------------------
_SAMPLE = textwrap.dedent("""
    import sys, torch
    from metaserve.config import SinusoidTaskConfig
    from metaserve.tasks import make_distribution
    dist = make_distribution(SinusoidTaskConfig())
    fields = ("support_x", "support_y", "query_x", "query_y")
    out = {f"{i}.{f}": getattr(dist.sample(3, 7, i), f) for i in (2, 3) for f in fields}
    torch.save(out, sys.argv[1])
""")


def test_same_task_in_separate_processes(tmp_path):
    files = [tmp_path / "a.pt", tmp_path / "b.pt"]
    # two children at once (PYTHONHASHSEED differs: nothing may hang on process-level randomness)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _SAMPLE, str(f)], env={**CHILD_ENV, "PYTHONHASHSEED": str(i)}, cwd=tmp_path
        )
        for i, f in enumerate(files)
    ]
    assert [c.wait(timeout=180) for c in children] == [0, 0]
    a, b = (torch.load(f) for f in files)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # another index is another task
    assert not torch.equal(a["2.support_x"], a["3.support_x"])
    assert not torch.equal(a["2.support_y"], a["3.support_y"])
    # and this process regenerates the same one
    from metaserve.config import SinusoidTaskConfig
    from metaserve.tasks import make_distribution

    here = make_distribution(SinusoidTaskConfig()).sample(3, 7, 2)
    assert torch.equal(here.query_y, a["2.query_y"])
    other_stream = make_distribution(SinusoidTaskConfig()).sample(3, 7, 2, stream="test")
    assert not torch.equal(other_stream.support_x, here.support_x)


# --- a run is a pure function of config and seed -------------------------------------------------
def test_run_is_pure_function_of_config_and_seed(tmp_path):
    runs = [
        train_loop(parse_config({**tiny_config(tmp_path / name), "seed": seed}))
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert_params_equal(runs[0].params, runs[1].params)
    assert runs[0].metrics["test_mse"] == runs[1].metrics["test_mse"]
    assert any(not torch.equal(runs[0].params[k], runs[2].params[k]) for k in runs[0].params)
    # and training moved the parameters at all
    init = build_learner(parse_config(tiny_config(tmp_path))).initial_params()
    assert any(not torch.equal(runs[0].params[k], init[k]) for k in init)


# --- short training learns -----------------------------------------------------------------------
def test_short_maml_training_beats_its_initialisation(tmp_path):
    """Sinusoid MAML (Finn et al. 2017, 5.1) after 800 outer steps vs the untrained initialisation."""
    config = parse_config(
        {
            "output_dir": str(tmp_path),
            "model": {"name": "mlp"},
            "algorithm": {
                "name": "maml",
                "inner_lr": 0.01,
                "inner_steps": 1,
                "eval_inner_steps": 10,
                "outer": {"optimizer": "adam", "lr": 1e-3},
            },
            "train": {
                "steps": 800,
                "meta_batch": 10,
                "log_every": 800,
                "checkpoint_every": 800,
                "val_tasks": 0,
                "dtype": "float32",
            },
        }
    )
    result = train_loop(config, final_eval=False)
    learner, dist = build_learner(config), build_distribution(config)
    before = evaluate(learner, learner.initial_params(), dist, seed=0, episodes=100)
    after = evaluate(learner, result.params, dist, seed=0, episodes=100)
    assert len(after.curve) == 11  # query loss after 0..10 inner steps
    assert after.mean < 0.5 * before.mean, (before.mean, after.mean)
    assert after.curve[-1]["loss"] < after.curve[0]["loss"]  # adaptation itself helps the learned init


# --- config validation ---------------------------------------------------------------------------
def test_unknown_key_is_rejected_with_the_known_keys():
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"stepz": 3}})
    msg = str(err.value)
    assert "train.stepz" in msg
    for key in ("steps", "meta_batch", "log_every", "checkpoint_every"):
        assert key in msg
    with pytest.raises(ConfigError, match="known keys here: .*algorithm.*train"):
        parse_config({"bogus": 1})


@pytest.mark.parametrize(
    "data,key",
    [
        ({"task": {"amplitude": [3.0, 1.0]}}, "task.amplitude"),
        ({"algorithm": {"name": "lazy-maml", "leap": 1.5}}, "algorithm.leap"),
        ({"algorithm": {"name": "protonet"}}, "algorithm.name='protonet'"),
        ({"train": {"log_every": 7, "checkpoint_every": 20}}, "train.checkpoint_every=20"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"algorithm": {"inner_lr": -0.1}}, "algorithm.inner_lr"),
        ({"model": {"name": "conv4"}}, "model.name='conv4'"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert key in str(err.value)


def test_apply_overrides_parses_typed_values():
    data = {"train": {"steps": 5}, "name": "x"}
    out = apply_overrides(
        data,
        [
            "train.steps=10",
            "algorithm.inner_lr=0.05",
            "model.hidden=[20, 20]",
            "train.dtype=float64",
            "runtime.address=null",
        ],
    )
    assert out["train"]["steps"] == 10 and type(out["train"]["steps"]) is int
    assert out["algorithm"]["inner_lr"] == 0.05 and type(out["algorithm"]["inner_lr"]) is float
    assert out["model"]["hidden"] == [20, 20]
    assert out["train"]["dtype"] == "float64"
    assert out["runtime"]["address"] is None
    assert data == {"train": {"steps": 5}, "name": "x"}  # the input is not modified
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides(data, ["train.steps"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(data, ["name.sub=1"])


def test_overrides_reach_the_validated_config():
    # YAML 1.1 reads "1e-3" as a string; the config must still end up with the float.
    config = load_config(
        ROOT / "configs" / "sinusoid-maml.yaml", ["algorithm.outer.lr=1e-3", "train.steps=7", "model.hidden=[8]"]
    )
    assert config.algorithm.outer.lr == pytest.approx(1e-3) and isinstance(config.algorithm.outer.lr, float)
    assert config.train.steps == 7
    assert config.model.hidden == [8]


# --- resume --------------------------------------------------------------------------------------
def test_resume_continues_exactly_and_skips_a_damaged_checkpoint(tmp_path):
    cfg40 = parse_config(tiny_config(tmp_path / "full", steps=40, log_every=20, checkpoint_every=20))
    full = train_loop(cfg40, final_eval=False)

    cfg20 = parse_config(tiny_config(tmp_path / "split", steps=20, log_every=20, checkpoint_every=20))
    first = train_loop(cfg20, final_eval=False)
    messages: list[str] = []
    resumed = train_loop(cfg40, run_dir=first.run_dir, resume=True, final_eval=False, progress=messages.append)
    assert messages[0].startswith("loading data") and "resumed at step 20" in messages[1]  # the run-directory line
    assert_params_equal(resumed.params, full.params)
    rows = read_metrics(resumed.run_dir)
    assert list(rows["step"]) == [20, 40]
    # TensorBoard shows the same rows, each step once across the first and the resumed run's event files
    board = tensorboard_scalars(resumed.run_dir / "tensorboard")
    assert len(list((resumed.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    for column in ("loss", "val_loss", "tasks_per_s", "learner_time"):
        assert board[column] == pytest.approx(dict(zip(rows["step"], rows[column])), rel=1e-6)

    # a truncated newest checkpoint is skipped, with a warning, for the previous good one
    state = full.run_dir / "checkpoints" / "00000040" / "state.pt"
    blob = state.read_bytes()
    state.write_bytes(blob[: len(blob) // 2])
    messages.clear()
    with pytest.warns(UserWarning, match="damaged checkpoint"):
        again = train_loop(cfg40, run_dir=full.run_dir, resume=True, final_eval=False, progress=messages.append)
    assert messages[0].startswith("loading data") and "resumed at step 20" in messages[1]  # the run-directory line
    assert_params_equal(again.params, full.params)
    # the resumed run logs step 40 again: its event file tells TensorBoard to drop the first one's from step 21
    first_file, resumed_file = sorted((full.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted({e.step for e in tensorboard_events(first_file) if e.summary.value}) == [20, 40]
    purges = [e.step for e in tensorboard_events(resumed_file) if e.HasField("session_log")]
    assert purges == [21]


# --- CLI and Python API smoke --------------------------------------------------------------------
def _cli_start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metaserve.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=CHILD_ENV,
    )


def _cli_finish(proc: subprocess.Popen, timeout=300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _cli(*args):
    return _cli_finish(_cli_start(*args))


def test_cli_train_eval_and_python_api(tmp_path):
    sets = [
        "train.steps=10",
        "train.log_every=5",
        "train.checkpoint_every=5",
        "train.val_tasks=10",
        "eval.episodes=20",
        f"output_dir={tmp_path}",
    ]
    # the rejected run goes alongside the real one: they are independent
    rejected = _cli_start(
        "train", "configs/sinusoid-maml.yaml", "--set", "train.stepz=3", "--set", f"output_dir={tmp_path / 'bad'}"
    )
    train = _cli("train", "configs/sinusoid-maml.yaml", *[a for s in sets for a in ("--set", s)])
    bad = _cli_finish(rejected)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "step 10/10" in train.stdout and "final metrics" in train.stdout
    (run_dir,) = tmp_path.glob("sinusoid-maml-*")
    assert (run_dir / "config.yaml").is_file()
    assert len(read_metrics(run_dir)) == 2
    assert (run_dir / "checkpoints" / "00000010" / "state.pt").is_file()

    ev = _cli("eval", str(run_dir), "--episodes", "20")
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "meta-test mse" in ev.stdout and "over 20 episodes" in ev.stdout

    assert bad.returncode != 0
    assert "train.stepz" in bad.stderr and "known keys here:" in bad.stderr and "meta_batch" in bad.stderr
    assert not (tmp_path / "bad").exists()  # rejected before any run directory is made

    # the Python API on the same run
    model = metaserve.load(run_dir)
    assert model.step == 10
    task = build_distribution(model.config).sample(0, 0, 0, stream="test")
    x, y = task.support_x, task.support_y
    adapted = model.adapt(x, y)
    assert adapted.predict(task.query_x).shape == task.query_y.shape
    unadapted = model.adapt(x, y, steps=0)
    assert float(((adapted.predict(x) - y) ** 2).mean()) < float(((unadapted.predict(x) - y) ** 2).mean())
