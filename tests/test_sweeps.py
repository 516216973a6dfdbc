"""Sweeps on Ray Tune: spec validation before any trial, ASHA end to end, PBT exploiting a
checkpoint, and resuming an interrupted sweep; trials compared against plain `train_loop` runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from metaserve import cli
from metaserve.api import as_config
from metaserve.config import ConfigError, parse_config
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.metrics import read_metrics
from metaserve.tuning import load_sweep, reported_metrics, run_sweep
from metaserve.tuning.search import to_tune
from metaserve.tuning.spec import TUNE_METRICS, parse_domain

from faults import trainable_failing_after

ROOT = Path(__file__).resolve().parents[1]


TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "algorithm": {"name": "fomaml", "inner_lr": 0.02, "inner_steps": 1, "outer": {"optimizer": "adam", "lr": 0.001}},
    "train": {
        "steps": 8,
        "meta_batch": 4,
        "log_every": 2,
        "checkpoint_every": 2,
        "val_tasks": 4,
        "dtype": "float64",
        "device": "cpu",
    },
    "eval": {"episodes": 8},
}


def write_spec(tmp_path: Path, base_config: dict | None = None, **spec) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_config or TINY))
    data = {
        "name": "t",
        "base": "base.yaml",
        "space": {"algorithm.inner_lr": {"grid": [0.01, 0.05]}},
        "metric": "val_loss",
        "storage": str(tmp_path / "sweeps"),
        **spec,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- a bad spec fails before any trial ------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, words",
    [
        ({"spaces": {}}, ["unknown sweep key 'spaces'", "known keys here", "space"]),
        ({"scheduler": {"name": "asha", "grace": 1}}, ["unknown sweep key 'scheduler.grace'", "grace_period"]),
        ({"space": {}}, ["space is empty"]),
        ({"space": {"algorithm.inner_lr": {"grid": []}}}, ["'algorithm.inner_lr'", "grid=[] is empty"]),
        ({"space": {"algorithm.inner_lr": {"uniform": [0.1, 0.01]}}}, ["empty range"]),
        ({"space": {"algorithm.inner_lr": {"normal": [0, 1]}}}, ["not a domain", "loguniform"]),
        (
            {"space": {"algorithm.inner_lrr": {"choice": [0.1]}}},
            ["unknown config key 'algorithm.inner_lrr'", "inner_lr"],
        ),
        (
            {"space": {"algorithm.inner_steps": {"grid": [1, 0]}}},
            ["algorithm.inner_steps=0", "greater than or equal to 1"],
        ),
        ({"metric": "val_acc"}, ["metric 'val_acc' is never reported", "val_loss"]),
        ({"metric": "omega_amplitude_high"}, ["never reported"]),  # no teacher, no omega
        (
            {
                "scheduler": {
                    "name": "pbt",
                    "perturbation_interval": 1,
                    "mutations": {"algorithm.inner_lr": {"uniform": [0.01, 0.1]}},
                }
            },
            None,
        ),  # aligned: valid
        ({"scheduler": {"name": "pbt", "perturbation_interval": 1}}, ["needs scheduler.mutations"]),
        (
            {"scheduler": {"name": "fifo", "grace_period": 2}},
            ["scheduler.grace_period applies to scheduler.name='asha'"],
        ),
        ({"base": "missing.yaml"}, ["'missing.yaml' not found"]),
    ],
)
def test_bad_spec_is_rejected_with_a_sentence(tmp_path, spec, words):
    path = write_spec(tmp_path, **spec)
    if words is None:
        load_sweep(path)
        return
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    for w in words:
        assert w in str(err.value)


def test_pbt_interval_must_land_on_checkpoints(tmp_path):
    base = {**TINY, "train": {**TINY["train"], "checkpoint_every": 4}}
    path = write_spec(
        tmp_path,
        base,
        scheduler={
            "name": "pbt",
            "perturbation_interval": 1,
            "mutations": {"algorithm.inner_lr": {"uniform": [0.01, 0.1]}},
        },
    )
    with pytest.raises(ConfigError, match="not a multiple of train.checkpoint_every=4"):
        load_sweep(path)


def test_cli_rejects_a_bad_spec_before_starting_anything(tmp_path):
    path = write_spec(tmp_path, metric="val_accuracy")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "metaserve.cli", "tune", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2
    assert "metric 'val_accuracy' is never reported" in proc.stderr
    assert not (tmp_path / "sweeps").exists()  # no sweep directory, no Ray, no trial


def test_ready_specs_validate():
    for path in sorted((ROOT / "tuning").glob("*.yaml")):
        sweep = load_sweep(path)
        assert sweep.space, path


@pytest.mark.parametrize(
    "curriculum",
    [
        {},
        {
            "teacher": "static",
            "threshold": 1.0,
            "every": 2,
            "stages": [{"amplitude_high": 1.0}, {"amplitude_high": 5.0}],
        },
        {
            "teacher": "adaptive",
            "target_loss": 1.0,
            "every": 2,
            "params": {"amplitude_high": {"low": 1.0, "high": 5.0}},
        },
    ],
)
def test_reported_metrics_are_what_a_trial_reports(tmp_path, curriculum):
    config = as_config(
        {**TINY, "train": {**TINY["train"], "steps": 2}, "output_dir": str(tmp_path), "curriculum": curriculum}
    )
    result = train_loop(config)
    assert reported_metrics(config) == set(result.metrics) | {"done_training", "start_step"} | TUNE_METRICS


def test_domains_sample_inside_their_ranges():
    lo = to_tune(parse_domain("k", {"loguniform": [1e-3, 1e-1]}))
    assert all(1e-3 <= lo.sample() <= 1e-1 for _ in range(50))
    ch = to_tune(parse_domain("k", {"choice": ["a", "b"]}))
    assert {ch.sample() for _ in range(50)} == {"a", "b"}
    assert to_tune(parse_domain("k", {"grid": [1, 2]})) == {"grid_search": [1, 2]}


# --- sweeps on the shared Ray ------------------------------------------------------------------------
def test_asha_sweep_end_to_end(ray_session, tmp_path, capsys):
    path = write_spec(
        tmp_path,
        space={"algorithm.inner_lr": {"grid": [0.001, 0.01, 0.05, 0.2]}},
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    assert cli.main(["tune", str(path)]) == 0
    printed = capsys.readouterr().out
    sweep_dir = Path(printed.strip().splitlines()[-1].removeprefix("sweep directory: "))
    results = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(results) == 4 and set(results["status"]) == {"TERMINATED"}
    assert sorted(results["algorithm.inner_lr"]) == [0.001, 0.01, 0.05, 0.2]
    for _, row in results.iterrows():
        assert row["trial_id"] in printed
        logged = read_metrics(Path(row["run_dir"]))  # each trial's own run directory
        assert row["val_loss_last"] == logged["val_loss"].iloc[-1]
        assert row["val_loss_best"] == logged["val_loss"].min()
        assert row["training_iteration"] <= 4  # one report per log row, the last with the meta-test
        assert row["completed"] == (row["training_iteration"] == 4)  # unless ASHA stopped it early
        assert row["completed"] == (not math.isnan(row["test_mse"]))  # the last report carries the meta-test
    best = results.loc[results["val_loss_last"].idxmin()]
    best_config = parse_config(yaml.safe_load((sweep_dir / "best_config.yaml").read_text()))
    assert best_config.algorithm.inner_lr == best["algorithm.inner_lr"]
    assert best_config.train.steps == TINY["train"]["steps"]


def reference_rows(tmp_path: Path, base: dict, lr: float, steps: int) -> pd.DataFrame:
    cfg = as_config(
        {
            **base,
            "output_dir": str(tmp_path / f"ref-{lr}"),
            "train": {**base["train"], "steps": steps},
            "algorithm": {**base["algorithm"], "outer": {"optimizer": "adam", "lr": lr}},
        }
    )
    return read_metrics(train_loop(cfg, final_eval=False).run_dir)


def test_pbt_trial_exploits_a_checkpoint_and_mutates_the_teacher(ray_session, tmp_path):
    lrs = [0.0001, 0.05]
    teacher = {
        "teacher": "adaptive",
        "every": 2,
        "val_tasks": 3,
        "target_loss": 1.0,
        "params": {"amplitude_high": {"low": 1.0, "high": 5.0, "step": 1.0}},
    }
    base = {**TINY, "train": {**TINY["train"], "steps": 6}, "curriculum": teacher}
    path = write_spec(
        tmp_path,
        base,
        space={"algorithm.outer.lr": {"grid": lrs}, "curriculum.target_loss": {"grid": [1.0]}},
        scheduler={
            "name": "pbt",
            "perturbation_interval": 2,
            "quantile_fraction": 0.5,
            "synch": True,
            "mutations": {"curriculum.target_loss": {"uniform": [0.5, 5.0]}},
        },
    )
    result = run_sweep(load_sweep(path), verbose=0)
    cols = ["val_loss", "omega_amplitude_high", "teacher_mean_amplitude_high"]
    refs = {lr: reference_rows(tmp_path, base, lr, 4)[cols] for lr in lrs}  # steps 2, 4 of each lr alone
    assert not refs[lrs[0]].equals(refs[lrs[1]])
    heads = [read_metrics(Path(d))[cols].iloc[:2].reset_index(drop=True) for d in result.results["run_dir"]]
    # each trial's rows up to the exploit are its own lr's (metrics.parquet keeps a trial's own history) ...
    assert sorted(lr for h in heads for lr in lrs if h.equals(refs[lr])) == lrs
    # ... and the exploiting trial took the donor's config, with the teacher's target loss explored
    assert len(set(result.results["algorithm.outer.lr"])) == 1
    targets = sorted(result.results["curriculum.target_loss"], key=lambda t: t != 1.0)
    assert targets[0] == 1.0 and targets[1] != 1.0 and 0.5 <= targets[1] <= 5.0 * 1.2
    assert (result.sweep_dir / "tune" / "pbt_global.txt").read_text().strip()
    assert (result.sweep_dir / "best_config.yaml").is_file()
    for d in result.results["run_dir"]:
        state = latest_good_state(Path(d))
        assert state["step"] == 6 and state["teacher"]["teacher"] == "adaptive" and state["teacher"]["updates"] == 3


def test_interrupted_sweep_resumes_from_checkpoints(ray_session, tmp_path, capsys):
    path = write_spec(tmp_path, space={"algorithm.inner_lr": {"choice": [0.03]}})  # one trial: 2 shared cores
    interrupted = run_sweep(
        load_sweep(path), verbose=0, trainable=trainable_failing_after(4)
    )  # the trial dies after checkpointing step 4
    assert set(interrupted.results["status"]) == {"ERROR"} and set(interrupted.results["step"]) == {4}
    assert cli.main(["tune", "--resume", str(interrupted.sweep_dir)]) == 0
    resumed = pd.read_parquet(interrupted.sweep_dir / "results.parquet")
    assert set(resumed["status"]) == {"TERMINATED"} and set(resumed["step"]) == {8}
    for _, row in resumed.iterrows():
        run_dir = Path(row["run_dir"])
        state = latest_good_state(run_dir)
        cfg = as_config(
            {
                **TINY,
                "output_dir": str(tmp_path / "ref"),
                "algorithm": {**TINY["algorithm"], "inner_lr": row["algorithm.inner_lr"]},
            }
        )
        expected = train_loop(cfg, final_eval=False)
        for k in expected.params:
            assert torch.equal(state["params"][k], expected.params[k]), k
        assert read_metrics(run_dir)["val_loss"].tolist() == read_metrics(expected.run_dir)["val_loss"].tolist()
    # the trials went on from step 4 (Tune's checkpoint), not from scratch
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(interrupted.sweep_dir / "tune"))
    assert [df["start_step"].dropna().iloc[-1] for df in analysis.trial_dataframes.values()] == [4.0]
