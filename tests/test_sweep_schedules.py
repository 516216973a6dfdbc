"""Scheduler settings that cannot work with what a trial does fail in `load_sweep`, before Ray starts.

The expected report counts are derived by hand from the configs: a trial reports once per log row,
ceil(train.steps / train.log_every) times (see tune_trainable.run_trial).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metaserve.config import ConfigError
from metaserve.tuning import load_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "algorithm": {"name": "fomaml", "inner_lr": 0.02, "inner_steps": 1, "outer": {"optimizer": "adam", "lr": 0.001}},
    "train": {"steps": 8, "meta_batch": 4, "log_every": 2, "checkpoint_every": 2, "val_tasks": 4, "device": "cpu"},
    "eval": {"episodes": 8},
}  # 8 / 2 = 4 reports per trial
MUTATE = {"algorithm.inner_lr": {"uniform": [0.01, 0.1]}}


def spec_file(tmp_path: Path, **spec) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY))
    data = {
        "name": "t",
        "base": "base.yaml",
        "space": {"algorithm.inner_lr": {"grid": [0.01, 0.05]}},
        "metric": "val_loss",
        "storage": str(tmp_path / "sweeps"),
        **spec,
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "sweep.yaml"


@pytest.mark.parametrize(
    "spec, words",
    [
        # 1. ASHA grace period above the 4 reports a trial makes (Ray would assert grace_period <= max_t once running)
        ({"scheduler": {"name": "asha", "grace_period": 5}}, ["scheduler.grace_period=5", "4 report(s)", "at most 4"]),
        # ... also when a searched train.steps makes some trials shorter: 2 / 2 = 1 report
        (
            {"scheduler": {"name": "asha", "grace_period": 2}, "space": {"train.steps": {"grid": [2, 8]}}},
            ["scheduler.grace_period=2", "at most 1"],
        ),
        # 2. an explicit ASHA max_t that no trial reaches
        ({"scheduler": {"name": "asha", "max_t": 10}}, ["scheduler.max_t=10", "never reached", "at most 4"]),
        # 3. a PBT interval at or past the last report: PBT would never perturb
        (
            {"scheduler": {"name": "pbt", "perturbation_interval": 4, "mutations": MUTATE}},
            ["scheduler.perturbation_interval=4", "never exploit", "below 4"],
        ),
        # 4. PBT interval between checkpoints: 1 report = 2 steps, checkpoints every 4
        (
            {
                "set": ["train.checkpoint_every=4"],
                "scheduler": {"name": "pbt", "perturbation_interval": 1, "mutations": MUTATE},
            },
            ["2 steps, not a multiple of train.checkpoint_every=4"],
        ),
        # 5. metric/mode: a loss maximised, an accuracy minimised would select the worst trial
        ({"mode": "max"}, ["mode='max' with metric 'val_loss'", "mode: min"]),
        # 6. a final-only metric under an early-stopping scheduler
        (
            {"metric": "test_mse", "scheduler": {"name": "asha", "grace_period": 1}},
            ["'test_mse' is reported only", "fifo"],
        ),
    ],
)
def test_scheduler_mismatch_fails_in_load_sweep(tmp_path, spec, words):
    with pytest.raises(ConfigError) as err:
        load_sweep(spec_file(tmp_path, **spec))
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "scheduler",
    [
        {"name": "asha", "grace_period": 4},  # == reports: allowed
        {"name": "asha", "grace_period": 1, "max_t": 4},
        {"name": "pbt", "perturbation_interval": 3, "mutations": MUTATE},  # perturbs at report 3 of 4
    ],
)
def test_scheduler_at_the_limit_is_accepted(tmp_path, scheduler):
    assert load_sweep(spec_file(tmp_path, scheduler=scheduler)).scheduler.name == scheduler["name"]


def test_issue_case_short_asha_sweep_fails_before_ray(tmp_path):
    """The shipped maml-reptile-lr-k spec with 60 steps: 60 / 100 -> 1 report, grace period 5."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    spec = ROOT / "tuning" / "maml-reptile-lr-k.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaserve.cli",
            "tune",
            str(spec),
            "--set",
            "set=[train.steps=60, train.log_every=100, train.checkpoint_every=1000]",
            "--set",
            f"storage={tmp_path / 'sweeps'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "scheduler.grace_period=5 exceeds the reports a trial makes" in proc.stderr
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout
    assert not (tmp_path / "sweeps").exists()  # no sweep directory, so no trial and no Ray
