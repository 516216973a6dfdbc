"""`metaserve report`: non-empty PNGs whose plotted data equal metrics.parquet, evaluation and sweep results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner
from metaserve.report import figure_data, learning_curves, omega_trajectory, report
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.metrics import read_metrics
from metaserve.tuning.spec import parse_sweep

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "meta-train, after adaptation": "loss",
    "meta-train, before adaptation": "loss_pre",
    "meta-val, after adaptation": "val_loss",
    "meta-val, before adaptation": "val_loss_pre",
}


def sinusoid_run(tmp_path: Path, name: str = "rep", **algorithm) -> Path:
    cfg = {
        "name": name,
        "seed": 2,
        "output_dir": str(tmp_path),
        "task": {"name": "sinusoid", "shots": 5, "query": 5},
        "model": {"name": "mlp", "hidden": [8, 8]},
        "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 2, **algorithm},
        "train": {
            "steps": 12,
            "meta_batch": 4,
            "log_every": 2,
            "checkpoint_every": 4,
            "val_tasks": 4,
            "dtype": "float64",
        },
        "eval": {"episodes": 6},
        "curriculum": {
            "teacher": "adaptive",
            "every": 2,
            "val_tasks": 4,
            "target_loss": 3.0,
            "params": {"amplitude_high": {"low": 0.5, "high": 5.0, "step": 1.0}},
        },
    }
    return train_loop(as_config(cfg), final_eval=False).run_dir


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 5000
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.std() > 0.05  # drawn, not blank


def lines(data: pd.DataFrame, panel_prefix: str) -> dict[str, pd.DataFrame]:
    sel = data[data["panel"].str.startswith(panel_prefix)]
    return {label: group for label, group in sel.groupby("line", sort=False)}


def test_cli_report_of_a_run_plots_its_metrics(tmp_path):
    run_dir = sinusoid_run(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "metaserve.cli", "report", str(run_dir), "--episodes", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "report"
    for name in ("learning_curves", "adaptation", "omega"):
        assert_png(out / f"{name}.png")
    metrics = read_metrics(run_dir)
    # the data drawn (read back from the figure into the CSV beside the PNG) is metrics.parquet
    drawn = lines(pd.read_csv(out / "learning_curves.csv"), "query loss")
    assert set(drawn) == set(LABELS)
    for label, column in LABELS.items():
        np.testing.assert_array_equal(drawn[label]["x"].to_numpy(), metrics["step"].to_numpy())
        np.testing.assert_allclose(drawn[label]["y"].to_numpy(), metrics[column].to_numpy(), rtol=1e-15, atol=0)
    omega = lines(pd.read_csv(out / "omega.csv"), "omega: amplitude_high")
    np.testing.assert_allclose(
        omega["omega trained on at the logged step"]["y"], metrics["omega_amplitude_high"], rtol=1e-15
    )
    np.testing.assert_allclose(omega["teacher centre"]["y"], metrics["teacher_mean_amplitude_high"], rtol=1e-15)
    # adaptation curves: an independent evaluation of the initial and the final parameters
    config, state = as_config(yaml.safe_load((run_dir / "config.yaml").read_text())), latest_good_state(run_dir)
    learner, dist = build_learner(config, "cpu"), build_distribution(config)
    kw = dict(episodes=7)
    adapt = lines(pd.read_csv(out / "adaptation.csv"), "query loss")
    for params, label in (
        (learner.initial_params(), "before meta-training"),
        (state["params"], "after meta-training (step 12)"),
    ):
        expected = [r["loss"] for r in evaluate(learner, params, dist, **kw).curve]
        np.testing.assert_allclose(adapt[label]["y"], expected, rtol=1e-12)
        assert adapt[label]["x"].tolist() == [0, 1, 2]
    summary = (out / "summary.md").read_text()
    assert "![omega](omega.png)" in summary and f"| val_loss | {metrics['val_loss'].iloc[-1]:.4f} |" in summary


def test_figures_hold_the_logged_columns(tmp_path):
    metrics = read_metrics(sinusoid_run(tmp_path))
    data = figure_data(learning_curves(metrics))
    for label, column in LABELS.items():
        assert data[data["line"] == label]["y"].tolist() == metrics[column].tolist()
    data = figure_data(omega_trajectory(metrics))
    assert data[data["line"].str.startswith("teacher meta-val")]["y"].tolist() == metrics["teacher_loss"].tolist()
    assert omega_trajectory(metrics.drop(columns=[c for c in metrics if c.startswith("omega_")])) is None


def _image_tree(root: Path, classes: int = 4, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "images" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")


def test_classification_run_plots_accuracy_under_a_ways_curriculum(tmp_path):
    _image_tree(tmp_path)
    split = {"sources": ["images"]}
    cfg = {
        "name": "img",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "task": {
            "name": "image-folder",
            "root": str(tmp_path),
            "ways": 3,
            "shots": 1,
            "query": 1,
            "image_size": 16,
            "channels": 1,
            "cache_dir": str(tmp_path / "cache"),
            "train": split,
            "test": split,
        },
        "model": {"name": "conv4", "hidden": 4},
        "algorithm": {"name": "maml", "inner_lr": 0.1, "inner_steps": 1},
        "train": {
            "steps": 4,
            "meta_batch": 2,
            "log_every": 2,
            "checkpoint_every": 2,
            "val_tasks": 2,
            "dtype": "float64",
        },
        "eval": {"episodes": 2},
        "curriculum": {
            "teacher": "static",
            "every": 2,
            "val_tasks": 2,
            "threshold": 100.0,
            "patience": 1,
            "stages": [{"ways": 2}, {"ways": 3}],
        },
    }
    run_dir = train_loop(as_config(cfg), final_eval=False).run_dir
    metrics = read_metrics(run_dir)
    assert metrics["omega_ways"].tolist() == [2.0, 3.0]  # a 2-way stage on the 3-output head, then the full 3 ways
    files = report(run_dir, episodes=2)
    data = lines(pd.read_csv(run_dir / "report" / "learning_curves.csv"), "query accuracy")
    np.testing.assert_allclose(data["meta-val, after adaptation"]["y"], metrics["val_acc"], rtol=1e-15)
    assert {f.name for f in files} >= {"learning_curves.png", "adaptation.png", "omega.png", "summary.md"}


def test_sweep_report_plots_results(tmp_path):
    run_dirs = [sinusoid_run(tmp_path / str(i), name=f"trial{i}", inner_lr=lr) for i, lr in enumerate([0.01, 0.03])]
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    base = yaml.safe_load((run_dirs[0] / "config.yaml").read_text())
    spec = {
        "name": "s",
        "base": {"b": {"inline": base}},
        "space": {"algorithm.inner_lr": {"grid": [0.01, 0.03]}},
        "metric": "val_loss",
    }
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    parse_sweep(spec, sweep_dir)
    last = [read_metrics(d)["val_loss"].iloc[-1] for d in run_dirs]
    results = pd.DataFrame(
        {
            "trial_id": ["t0", "t1"],
            "base": "b",
            "algorithm.inner_lr": [0.01, 0.03],
            "val_loss_last": last,
            "val_loss_best": last,
            "training_iteration": 7,
            "status": "TERMINATED",
            "run_dir": [str(d) for d in run_dirs],
        }
    )
    results.to_parquet(sweep_dir / "results.parquet")
    report(sweep_dir)
    assert_png(sweep_dir / "report" / "sweep.png")
    points = pd.read_csv(sweep_dir / "report" / "sweep.csv")
    assert points["y"].tolist() == last
    curves = lines(pd.read_csv(sweep_dir / "report" / "sweep_curves.csv"), "sweep")
    for label, d in zip(
        ["inner_lr=0.01", "inner_lr=0.03"], run_dirs
    ):  # legends name the hyperparameters, not trial ids
        assert curves[label]["y"].tolist() == read_metrics(d)["val_loss"].tolist()
    assert "t0" in (sweep_dir / "report" / "summary.md").read_text()


def test_report_of_something_else_names_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        report(tmp_path)
