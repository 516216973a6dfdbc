"""Bad inputs through `metaserve.cli.main`: each is exit code 2, one sentence naming the value, no traceback,
every pre-existing file (a finished run, a damaged run, a sweep folder, the configs) byte-identical after,
and Ray not started.

The world is built once per module: a tiny finished sinusoid run plus damaged copies of it, a sweep
folder with planted pickles whose payload would create a file, and configs. Every case checksums the
whole world before and after, so a case that writes a run folder, a resume log or a partial report
fails, and asserts the payload marker does not exist.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
import ray
import yaml

from metaserve import cli
from metaserve.api import as_config
from metaserve.runtime.loop import train_loop
from metaserve.tuning import manifest
from metaserve.tuning.spec import load_sweep

TINY = {
    "name": "tiny",
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {"steps": 2, "meta_batch": 2, "log_every": 1, "checkpoint_every": 2, "val_tasks": 0},
    "eval": {"episodes": 2},
}


class Payload:
    """Unpickling this creates `marker`: the stand-in for code a planted pickle would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _world(root: Path) -> dict[str, str]:
    out = root / "out"
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "output_dir": str(out)}))
    run = train_loop(as_config(cfg), final_eval=True).run_dir
    marker = str(root / "PAYLOAD-RAN")
    nockpt = root / "nockpt"
    shutil.copytree(run, nockpt)
    shutil.rmtree(nockpt / "checkpoints")
    damaged = root / "damaged"
    shutil.copytree(run, damaged)
    state = next((damaged / "checkpoints").iterdir()) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    planted = root / "planted"
    shutil.copytree(run, planted)
    (next((planted / "checkpoints").iterdir()) / "state.pt").write_bytes(pickle.dumps(Payload(marker)))
    badcfg = root / "badcfg"
    shutil.copytree(run, badcfg)
    (badcfg / "config.yaml").write_text("task: {name: sinusoid\n")
    (root / "empty.yaml").write_text("")
    (root / "syntax.yaml").write_text("task:\n  name: sinusoid\n shots: 3\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "emptydir").mkdir()
    (root / "afile").write_text("not a directory\n")
    spec = root / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "base": "tiny.yaml",
                "metric": "loss",
                "storage": str(root / "sweeps"),
                "space": {"algorithm.inner_lr": {"choice": [0.01, 0.02]}},
            }
        )
    )
    (root / "emptyspec.yaml").write_text("")
    (root / "syntaxspec.yaml").write_text("name: [s\n")
    for cls in ("c1", "c2"):  # an image folder whose images are not images
        (root / "imgs" / "src" / cls).mkdir(parents=True)
        (root / "imgs" / "src" / cls / f"{cls}.png").write_bytes(b"not a png")
    (root / "imgs.yaml").write_text(
        yaml.safe_dump(
            {
                "task": {
                    "name": "image-folder",
                    "root": str(root / "imgs"),
                    "ways": 2,
                    "shots": 1,
                    "query": 1,
                    "image_size": 8,
                    "rotations": False,
                    "cache_dir": str(root / "cache"),
                    "train": {"sources": ["src"]},
                    "test": {"sources": ["src"]},
                },
                "model": {"name": "conv4"},
                "algorithm": {"name": "protonet"},
                "output_dir": str(out),
            }
        )
    )
    sweeps = _sweeps(root, load_sweep(spec), marker)
    return {
        "root": str(root),
        "cfg": str(cfg),
        "run": str(run),
        "nockpt": str(nockpt),
        "damaged": str(damaged),
        "planted": str(planted),
        "badcfg": str(badcfg),
        "spec": str(spec),
        "marker": marker,
        **sweeps,
    }


def _sweep_dir(root: Path, name: str, sweep) -> Path:
    path = root / name
    (path / "tune").mkdir(parents=True)
    (path / "sweep.yaml").write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    return path


def _sweeps(root: Path, sweep, marker: str) -> dict[str, str]:
    """Sweep folders whose tune/ holds a pickle this user's sweep did not write (or no manifest at all)."""
    bad = pickle.dumps(Payload(marker))
    unsigned = _sweep_dir(root, "sweep-unsigned", sweep)
    (unsigned / "tune" / "tuner.pkl").write_bytes(bad)
    swapped = _sweep_dir(root, "sweep-swapped", sweep)
    (swapped / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    manifest.sign(swapped)
    (swapped / "tune" / "tuner.pkl").write_bytes(bad)
    extra = _sweep_dir(root, "sweep-extra-state", sweep)
    (extra / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    manifest.sign(extra)
    (extra / "tune" / "experiment_state-2026-12-02_15-00-00.json").write_bytes(bad)
    error = _sweep_dir(root, "sweep-error-pkl", sweep)
    (error / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    manifest.sign(error)
    (error / "tune" / "trial_0" / "error.pkl").parent.mkdir()
    (error / "tune" / "trial_0" / "error.pkl").write_bytes(bad)
    foreign = _sweep_dir(root, "sweep-foreign-key", sweep)
    (foreign / "tune" / "tuner.pkl").write_bytes(bad)
    mine = os.environ["METASERVE_KEY_FILE"]
    os.environ["METASERVE_KEY_FILE"] = str(root / "colleague.key")
    try:
        manifest.sign(foreign)  # a colleague's sweep: signed, but not with this user's key
    finally:
        os.environ["METASERVE_KEY_FILE"] = mine
    os.remove(root / "colleague.key")
    return {
        n: str(p)
        for n, p in [
            ("unsigned", unsigned),
            ("swapped", swapped),
            ("extra", extra),
            ("errorpkl", error),
            ("foreign", foreign),
        ]
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    return _world(tmp_path_factory.mktemp("world"))


def _checksums(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


S = "train {cfg} --set "  # a train command with one override
R = "train --resume {run} --set "  # a resume with one override
CASES = [
    # config values (YAML from --set), each naming the value
    (S + "train.device=banana", "banana"),
    (S + "train.device=gpu0", "gpu0"),
    (S + "train.device=cuda:x", "cuda:x"),
    (S + "train.steps=true", "True"),
    (S + "train.steps=0", "train.steps=0"),
    (S + "train.steps=-1", "-1"),
    (S + "train.steps=1.5", "1.5"),
    (S + "train.steps=ten", "'ten'"),
    (S + "train.meta_batch=1e9", "1e9"),
    (S + "train.meta_batch=1000000000", "1000000000"),
    (S + "train.meta_batch=0", "train.meta_batch=0"),
    (S + "algorithm.inner_lr=.inf", "inf"),
    (S + "algorithm.inner_lr=.nan", "nan"),
    (S + "algorithm.inner_lr=-0.1", "-0.1"),
    (S + "algorithm.inner_lr=true", "True"),
    (S + "algorithm.inner_steps=0", "inner_steps=0"),
    (S + "algorithm.outer.lr=0", "outer.lr=0"),
    (S + "algorithm.outer.optimizer=rmsprop", "rmsprop"),
    (S + "algorithm.name=foo", "foo"),
    (S + "algorithm.leap=0.5", "leap"),
    (S + "algorithm.eval_inner_steps=-2", "-2"),
    (S + "output_dir=s3:/bucket", "s3:/bucket"),
    (S + "output_dir=s3:bucket", "s3:bucket"),
    (S + "output_dir=ftp://host/x", "ftp://host/x"),
    (S + "output_dir=s3://", "s3://"),
    (S + "output_dir={root}/afile", "afile"),
    (S + "name=../../escaped", "../../escaped"),
    (S + "name=/abs/name", "/abs/name"),
    (S + "name=a/b", "a/b"),
    (S + "name=..", "'..'"),
    (S + "name=''", "''"),
    (S + "task.name=mnist", "mnist"),
    (S + "task.shots=0", "task.shots=0"),
    (S + "task.amplitude=[5,1]", "amplitude"),
    (S + "task.query=-3", "-3"),
    (S + "task.x_range=[1]", "x_range"),
    (S + "model.name=conv4", "conv4"),
    (S + "model.hidden=[0]", "hidden"),
    (S + "train.log_every=0", "log_every=0"),
    (S + "train.log_every=4", "log_every=4"),
    (S + "train.dtype=float16", "float16"),
    (S + "train.vectorize=maybe", "maybe"),
    (S + "train.val_tasks=-1", "-1"),
    (S + "train.time_budget_s=0", "time_budget_s=0"),
    (S + "train.time_budget_s=-30", "-30"),
    (S + "train.time_budget_s=soon", "soon"),
    (S + "train.early_stop.metric=val_acc --set train.val_tasks=5", "val_acc"),  # a regression task has no accuracy
    (S + "train.early_stop.metric=loss --set train.val_tasks=5", "'loss'"),  # a training column, not validation
    (S + "train.early_stop.metric=val_loss", "val_tasks"),  # validation is off (val_tasks 0)
    (S + "train.early_stop.patience=0 --set train.val_tasks=5", "patience=0"),
    (S + "train.early_stop.min_delta=-0.1 --set train.val_tasks=5", "-0.1"),
    (S + "train.early_stop.mode=max --set train.val_tasks=5", "mode"),
    (S + "eval.episodes=0", "eval.episodes=0"),
    (S + "eval.episodes=-5", "-5"),
    (S + "eval.inner_steps=0", "inner_steps=0"),
    (S + "runtime.backend=spark", "spark"),
    (S + "runtime.num_workers=0", "num_workers=0"),
    (S + "runtime.cpus_per_worker=0", "cpus_per_worker=0"),
    (S + "runtime.gpus_per_worker=-1", "-1"),
    (S + "runtime.placement_strategy=RANDOM", "RANDOM"),
    (S + "runtime.on_nonfinite=ignore", "ignore"),
    (S + "runtime.transport=grpc", "grpc"),
    (S + "runtime.worker_wait_s=0", "worker_wait_s=0"),
    (S + "curriculum.teacher=smart", "smart"),
    (S + "curriculum.teacher=static", "static"),
    (S + "seed=abc", "abc"),
    (S + "seed=true", "True"),
    (S + "unknown.key=1", "unknown"),
    (S + "train.stepz=5", "stepz"),
    (S + "train.steps=[1", "train.steps=[1"),
    (S + "train.steps={{a:", "train.steps={{a:"),
    (S + "train", "'train'"),
    (S + "=5", "'=5'"),
    (S + "task.shots.x=1", "shots"),
    (S + "train.steps.deep=1", "train.steps"),
    (S + "runtime.backend=ray --set runtime.num_workers=100000", "100000"),
    (S + "runtime.backend=ray --set runtime.cpus_per_worker=1000", "1000"),
    # config files and command shapes
    ("train {root}/missing.yaml", "missing.yaml"),
    ("train {root}/syntax.yaml", "syntax.yaml"),
    ("train {root}/empty.yaml", "empty.yaml"),
    ("train {root}/list.yaml", "list"),
    ("train {root}/binary.yaml", "binary.yaml"),
    ("train {root}/emptydir", "emptydir"),
    ("train", "CONFIG"),
    ("train {cfg} --resume {run}", "not both"),
    ("train {cfg} --restart", "--restart"),
    ("train {root}/imgs.yaml", "imgs/src/c1/c1.png"),
    # resume: the run keeps its config; no loadable checkpoint is an error listing what was found
    (R + "model.hidden=[20]", "model.hidden"),
    (R + "algorithm.inner_lr=0.5", "algorithm.inner_lr"),
    (R + "seed=3", "seed"),
    (R + "train.meta_batch=4", "train.meta_batch"),
    (R + "train.steps=1", "train.steps=1"),
    (R + "train.steps=abc", "abc"),
    (R + "name=other", "name"),
    (R + "output_dir=/tmp/elsewhere", "output_dir"),
    (R + "runtime.on_nonfinite=skip", "on_nonfinite"),
    ("train --resume {nockpt}", "no checkpoints/<step>/state.pt"),
    ("train --resume {damaged}", "00000002"),
    ("train --resume {planted}", "00000002"),
    ("train --resume {root}/missing", "missing"),
    ("train --resume {root}/emptydir", "emptydir"),
    ("train --resume {run}/checkpoints", "checkpoints"),
    ("train --resume {badcfg}", "badcfg"),
    ("train --resume {root}/afile", "afile"),
    # eval and report
    ("eval {run} --episodes 0", "--episodes 0"),
    ("eval {run} --episodes -5", "--episodes -5"),
    ("eval {run} --steps -3", "--steps -3"),
    ("eval {root}/missing", "missing"),
    ("eval {root}/emptydir", "emptydir"),
    ("eval {damaged}", "state.pt"),
    ("eval {planted}", "state.pt"),
    ("eval {root}/afile", "afile"),
    ("report {run} --episodes -1", "--episodes -1"),
    ("report {run} --episodes 0", "--episodes 0"),
    ("report {root}/missing", "missing"),
    ("report {root}/emptydir", "emptydir"),
    # sweeps
    ("tune {root}/missing.yaml", "missing.yaml"),
    ("tune {root}/syntaxspec.yaml", "syntaxspec.yaml"),
    ("tune {root}/emptyspec.yaml", "emptyspec.yaml"),
    ("tune {spec} --set space.algorithm.inner_lr=5", "algorithm.inner_lr"),
    ('tune {spec} --set space.algorithm.inner_lr={{"grid":[]}}', "algorithm.inner_lr"),
    ('tune {spec} --set space.algorithm.nope={{"grid":[1]}}', "nope"),
    ("tune {spec} --set name=../x", "../x"),
    ("tune {spec} --set num_samples=0", "num_samples"),
    ("tune {spec} --set metric=nope", "nope"),
    ("tune {spec} --set scheduler.name=hyperband", "hyperband"),
    ("tune {spec} --set space.x", "space.x"),
    ("tune --resume {run}", "sweep.yaml"),
    ("tune --resume {root}/missing", "missing"),
    ("tune", "SPEC"),
    ("tune {spec} --resume {run}", "exactly one"),
    ("tune --resume {unsigned}", "manifest.json"),
    ("tune --resume {swapped}", "tuner.pkl"),
    ("tune --resume {extra}", "experiment_state-2026-12-02_15-00-00.json"),
    ("tune --resume {errorpkl}", "error.pkl"),
    ("tune --resume {foreign}", "manifest.json"),
    ("tune --resume {swapped} --set num_samples=2", "--set"),
    # submit (validated here, before any cluster is contacted)
    ("submit", "needs the command"),
    ("submit -- metaserve jobs list", "metaserve jobs"),
    ("submit --dry-run --env 1BAD -- metaserve train {cfg}", "1BAD"),
    ("submit --dry-run --env RAY_AUTH_TOKEN=x -- metaserve train {cfg}", "RAY_AUTH_TOKEN"),
    ("submit --dry-run --env METASERVE_UNSET_XYZ -- metaserve train {cfg}", "METASERVE_UNSET_XYZ"),
    ("submit --dry-run --working-dir {root}/missing -- metaserve train {cfg}", "missing"),
    ("submit --dry-run -- metaserve train {cfg} --set train.steps=0", "train.steps=0"),
    ("submit --dry-run --storage s3:/bucket -- metaserve train {cfg}", "s3:/bucket"),
    ("submit --dry-run --storage s3://b/x -- metaserve tune {spec}", "s3://b/x"),
    ("submit --dry-run --working-dir {root}/emptydir -- metaserve train {cfg}", "tiny.yaml"),
    ("submit --dry-run --storage {root}/x -- metaserve eval {run}", "--storage"),
    ("submit --dry-run -- metaserve train {cfg} --bogus", "--bogus"),
    ("jobs status x --address ray://head:10001", "ray://head:10001"),
    # argparse's own errors, also exit 2 naming the value
    ("train {cfg} --bogus", "--bogus"),
    ("eval {run} --episodes abc", "abc"),
    ("report {run} --episodes 1.5", "1.5"),
    ("frobnicate", "frobnicate"),
]


IDS = [c[0].split(" ", 1)[0] + ":" + c[0].split(" ", 1)[-1][-60:] for c in CASES]


@pytest.mark.parametrize("argv, named", CASES, ids=IDS)
def test_bad_input_is_exit_2_naming_the_value_with_nothing_changed(world, argv, named, capsys, monkeypatch):
    monkeypatch.chdir(world["root"])  # submit ships the current folder; relative paths land in the world
    root = Path(world["root"])
    before, ray_was_up = _checksums(root), ray.is_initialized()
    args = [a.format(**world) for a in argv.split(" ")] if argv else []
    assert cli.main(args) == 2
    assert ray.is_initialized() == ray_was_up, "Ray was started for an input that could never run"
    err = capsys.readouterr().err
    assert named.format(**world) in err, err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("metaserve: error:")]) <= 1, err
    assert _checksums(root) == before
    assert not os.path.exists(world["marker"]), "a planted pickle ran"


def test_at_least_100_cases():
    assert len(CASES) >= 100


def test_debug_shows_the_traceback(world, capsys, monkeypatch):
    with pytest.raises(Exception, match="banana"):
        cli.main(["--debug", "train", world["cfg"], "--set", "train.device=banana"])
    monkeypatch.setenv("METASERVE_DEBUG", "1")
    with pytest.raises(Exception, match="banana"):
        cli.main(["train", world["cfg"], "--set", "train.device=banana"])


def test_a_signed_sweep_folder_verifies_and_a_flipped_byte_does_not(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "tune").mkdir(parents=True)
    (sweep / "tune" / "tuner.pkl").write_bytes(pickle.dumps({"a": 1}))
    manifest.sign(sweep)
    manifest.verify(sweep)  # our own folder resumes
    data = bytearray((sweep / "tune" / "tuner.pkl").read_bytes())
    data[-2] ^= 1
    (sweep / "tune" / "tuner.pkl").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed after it was signed"):
        manifest.verify(sweep)
    assert oct(manifest.key_path().stat().st_mode & 0o777) == "0o600"


RAY_CASES = [  # checked right after connecting (ray_session: 4 CPUs, no GPU), before any worker or run folder
    ("train {cfg} --set runtime.backend=ray --set runtime.gpus_per_worker=1", "gpus_per_worker=1"),
    ("train {cfg} --set runtime.backend=ray --set runtime.num_workers=5", "num_workers=5"),
    (
        "train {cfg} --set runtime.backend=ray --set runtime.cpus_per_worker=2.5 --set runtime.num_workers=2",
        "cpus_per_worker=2.5",
    ),
]


@pytest.mark.parametrize("argv, named", RAY_CASES)
def test_more_than_the_cluster_has_is_refused_before_any_worker(ray_session, world, argv, named, capsys):
    root = Path(world["root"])
    before, groups = _checksums(root), set(ray_session.util.placement_group_table())
    assert cli.main([a.format(**world) for a in argv.split(" ")]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert _checksums(root) == before
    assert set(ray_session.util.placement_group_table()) == groups, "a placement group was requested"
