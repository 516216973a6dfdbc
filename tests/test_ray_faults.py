"""Faults beyond one killed worker: lost nodes, a killed driver, non-finite updates, restarted workers.

The two end-to-end scenarios run their own Ray in a subprocess (a driver connects to one Ray only, and
the rest of the suite shares the session's embedded one), each under a private RAY_TMPDIR so they
neither find nor disturb any other Ray on the machine, in a new session whose processes are all
killed afterwards.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from metaserve.api import as_config, load
from metaserve.runtime.loop import train_loop
from metaserve.runtime.work import NonFiniteUpdate
from metaserve.store.checkpoint import latest_good_state, list_checkpoints
from metaserve.store.metrics import read_metrics
from metaserve.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"

BASE = {
    "name": "faults",
    "seed": 4,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 1},
    "train": {
        "steps": 10,
        "meta_batch": 7,
        "log_every": 2,
        "checkpoint_every": 2,
        "val_tasks": 0,
        "dtype": "float64",
        "device": "cpu",
    },
    "eval": {"episodes": 10},
    "runtime": {"cpus_per_worker": 1},
}


def config_dict(output_dir: Path, **sections) -> dict:
    """BASE with some sections updated key by key."""
    merged = {k: {**BASE[k], **v} if isinstance(v, dict) and k in BASE else v for k, v in sections.items()}
    return {**BASE, "output_dir": str(output_dir), **merged}


def only_run_dir(output_dir: Path) -> Path:
    runs = [p for p in Path(output_dir).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_params_close(got: dict, expected: dict, rtol: float, what: str) -> None:
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=rtol, atol=1e-12, msg=f"{what}: {k}")


# --- subprocesses with their own Ray ------------------------------------------------------------


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def end_session(sid: int, grace_s: float = 0.0) -> list[int]:
    """Wait up to grace_s for session `sid` (one we started) to empty, then SIGKILL what is left; returns that."""
    deadline = time.monotonic() + grace_s
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@contextmanager
def own_ray_env():
    """Environment for a subprocess with a Ray of its own: a private, short RAY_TMPDIR, no RAY_ADDRESS."""
    tmp = tempfile.mkdtemp(prefix="msf-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # One torch thread per process: on a small shared machine more threads oversubscribe the cores.
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    try:
        yield env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


# --- 1. several nodes: SPREAD placement, a lost node, no spare node -------------------------------


@pytest.mark.slow
def test_multinode_spread_and_lost_nodes(tmp_path):
    log = tmp_path / "multinode.log"
    with own_ray_env() as env:
        proc = start([sys.executable, str(SCENARIOS / "multinode.py"), str(tmp_path / "runs")], env, log)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pass
        finally:
            end_session(proc.pid)
            proc.wait()
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT:")]
    assert lines, f"the scenario printed no result (rc {proc.returncode}):\n{text[-5000:]}"
    out = json.loads(lines[-1].removeprefix("RESULT:"))
    print(json.dumps(out, indent=1))
    assert out["ok"], out.get("traceback")

    # (a) 3 workers under SPREAD, one per worker node, none on the CPU-less head.
    assert sorted(out["spread"]) == ["node_a", "node_b", "node_c"]
    # (b) worker 0 lost its node after the first log row and came back on the spare node ...
    assert len(set(out["before"])) == 2 and "head" not in out["before"]
    spare = ({"node_a", "node_b", "node_c"} - set(out["before"])).pop()
    assert out["removed_at_step"] == 2
    assert out["after"] == [spare, out["before"][1]]
    # ... and the run ended with the local backend's parameters.
    assert out["run_matches_local"], out["run_max_abs_diff"]
    # (c) with no spare node, a meta-step still gives the fault-free update (worker 1's slice re-sent) ...
    assert out["no_spare_matches_local"]
    assert out["sends_without_spare"] == 3  # worker 1's slice went to it, failed, and was re-sent
    # ... and the step after goes to the live worker only: no call lost on the dead one.
    assert out["next_step_matches_local"] and out["sends_next_step"] == 2
    # ... and with no worker node left, WorkersUnavailable comes after about runtime.worker_wait_s (4 s).
    assert out["unavailable"] and "runtime.worker_wait_s=4.0s" in out["unavailable"]
    assert 3.5 <= out["unavailable_after_s"] < 15


# --- 2. the driver killed mid-run, then resumed -----------------------------------------------------


@pytest.mark.slow
def test_killed_driver_resumes_to_the_uninterrupted_result(tmp_path, one_thread):
    steps = 200
    cfg = config_dict(
        tmp_path / "runs",
        train={"steps": 20, "meta_batch": 8, "log_every": 10, "checkpoint_every": 20},
        runtime={"backend": "ray", "num_workers": 2},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "metaserve.cli", "train"]
    with own_ray_env() as env:
        proc = start(cli + [str(path), "--set", f"train.steps={steps}"], env, tmp_path / "killed.log")
        try:
            deadline = time.monotonic() + 150
            while not (
                (tmp_path / "runs").is_dir()
                and any(len(list_checkpoints(p)) >= 2 for p in (tmp_path / "runs").iterdir())
            ):
                assert proc.poll() is None, f"the driver exited early:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no 2 checkpoints within 150 s"
                time.sleep(0.05)
            assert proc.poll() is None, "the run finished before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its GCS and raylet
            proc.wait()
            lingering = end_session(proc.pid, grace_s=20)  # workers exit once their raylet is gone
        finally:
            end_session(proc.pid)
        assert not lingering, f"processes of the killed driver's Ray still alive 20 s after: {lingering}"

        run_dir = only_run_dir(tmp_path / "runs")
        killed_at = latest_good_state(run_dir)["step"]
        assert 40 <= killed_at < steps
        # Resume on the local backend (the Ray backend gives the same parameters; see test_ray_runtime).
        resumed = subprocess.run(
            cli + ["--resume", str(run_dir), "--set", "runtime.backend=local"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"(resumed at step {killed_at})" in resumed.stdout

    reference = train_loop(
        as_config({**cfg, "output_dir": str(tmp_path / "ref")}, [f"train.steps={steps}", "runtime.backend=local"]),
        final_eval=False,
    )
    model = load(run_dir)
    assert model.step == steps
    assert_params_close(model.params, reference.params, 1e-9, "resumed vs uninterrupted")
    # One metrics row per log step: the killed part's rows past its last checkpoint are not kept twice.
    logged = read_metrics(run_dir)["step"].tolist()
    assert logged == list(range(10, steps + 1, 10))
    assert read_metrics(run_dir)["loss"].tolist() == pytest.approx(
        read_metrics(reference.run_dir)["loss"].tolist(), rel=1e-9
    )


# --- 3. a non-finite update stops the run, the last good checkpoint intact ------------------------


class PoisonedTasks:
    """A task distribution whose training task (`step`, `index`) has NaN query targets."""

    def __init__(self, inner, step: int, index: int):
        self.inner, self.step, self.index = inner, step, index

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, seed, step, index, space=None, stream="train") -> Task:
        task = self.inner.sample(seed, step, index, space, stream)
        if (stream, step, index) == ("train", self.step, self.index):
            task = Task(task.support_x, task.support_y, task.query_x, torch.full_like(task.query_y, math.nan))
        return task


@pytest.fixture
def poison_step_5(monkeypatch):
    import metaserve.runtime.loop as learner_module

    real = learner_module.build_distribution
    monkeypatch.setattr(
        learner_module, "build_distribution", lambda config: PoisonedTasks(real(config), step=5, index=3)
    )


def test_nonfinite_update_stops_with_the_last_good_checkpoint(tmp_path, poison_step_5, one_thread):
    config = as_config(config_dict(tmp_path / "runs", runtime={"backend": "local"}))
    with pytest.raises(NonFiniteUpdate) as err:
        train_loop(config, final_eval=False)
    run_dir = only_run_dir(tmp_path / "runs")
    message = str(err.value)
    assert "non-finite contribution at step 5 from the local process, task indices [0, 1, 2, 3, 4, 5, 6]" in message
    assert f"its last good checkpoint is in {run_dir / 'checkpoints'}" in message

    state = latest_good_state(run_dir)
    assert state["step"] == 4
    assert all(bool(v.isfinite().all()) for v in state["params"].values())
    assert read_metrics(run_dir)["step"].tolist() == [2, 4]
    # The checkpoint is the clean run's state at step 4.
    clean = train_loop(
        as_config(config_dict(tmp_path / "clean", train={"steps": 4}, runtime={"backend": "local"})), final_eval=False
    )
    assert_params_close(state["params"], clean.params, 1e-12, "last good checkpoint vs clean run")


@pytest.mark.parametrize("poisoned, every", [(5, 2), (9, 2), (9, 1)])  # 9: the last step; every=1: a window of only it
def test_nonfinite_update_skipped_when_asked(tmp_path, monkeypatch, poisoned, every, one_thread):
    import metaserve.runtime.loop as learner_module

    real = learner_module.build_distribution
    monkeypatch.setattr(
        learner_module, "build_distribution", lambda config: PoisonedTasks(real(config), step=poisoned, index=0)
    )
    config = as_config(
        config_dict(
            tmp_path / "runs",
            train={"log_every": every, "checkpoint_every": every},
            runtime={"backend": "local", "on_nonfinite": "skip"},
        )
    )
    with pytest.warns(UserWarning, match=rf"skipping step: non-finite contribution at step {poisoned}"):
        result = train_loop(config, final_eval=False)
    assert all(bool(v.isfinite().all()) for v in result.params.values())
    # The skipped step still counts: the checkpoints due at and after it are written, the last at step 10 ...
    state = latest_good_state(result.run_dir)
    assert state["step"] == 10 and state["skipped"] == 1
    assert [int(p.name) for p in list_checkpoints(result.run_dir)] == [10 - 2 * every, 10 - every, 10]
    # ... and every log step where some step ran has its row.
    ran = [s for s in range(every, 11, every) if set(range(s - every, s)) != {poisoned}]
    assert read_metrics(result.run_dir)["step"].tolist() == ran
    assert result.metrics["step"] == ran[-1]


def test_diverging_run_on_ray_stops_naming_the_worker(ray_session, tmp_path):
    # Plain SGD at outer lr 3 overflows float32 within a few steps (no monkeypatching reaches a worker).
    config = as_config(
        config_dict(
            tmp_path / "runs",
            seed=0,
            algorithm={"inner_lr": 0.01, "outer": {"optimizer": "sgd", "lr": 3.0}},
            train={
                "steps": 30,
                "meta_batch": 4,
                "task_block": 2,
                "log_every": 1,
                "checkpoint_every": 1,
                "dtype": "float32",
            },
            runtime={"backend": "ray", "num_workers": 2},
        )
    )
    with pytest.raises(NonFiniteUpdate) as err:
        train_loop(config, final_eval=False)
    run_dir = only_run_dir(tmp_path / "runs")
    found = re.search(
        r"non-finite contribution at step (\d+) from worker ([01]), task indices (\[0, 1\]|\[2, 3\])", str(err.value)
    )
    assert found, str(err.value)
    assert f"its last good checkpoint is in {run_dir / 'checkpoints'}" in str(err.value)
    failed = int(found.group(1))
    assert found.group(3) == ("[0, 1]" if found.group(2) == "0" else "[2, 3]")  # worker i computes slice i
    state = latest_good_state(run_dir)
    assert failed >= 1 and state["step"] == failed
    assert all(bool(v.isfinite().all()) for v in state["params"].values())
