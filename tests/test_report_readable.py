"""Readable reports: PNGs regenerated, axes and labels checked from the plotted-data CSV beside each.

Log scale when a panel's values span > 1e3, legends with hyperparameter names, CI bands, integer step
ticks, one metric name, the run's own test.json in the summary, and the sinusoid fit plot (Finn et al.
Fig. 2) checked against a hand SGD step and a least-squares fit of the true curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.report import choose_scale, learning_curves, report
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.metrics import write_metrics

CFG = {
    "name": "rd",
    "seed": 3,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 1, "eval_inner_steps": 2},
    "train": {"steps": 4, "meta_batch": 2, "log_every": 2, "checkpoint_every": 2, "val_tasks": 3, "dtype": "float64"},
    "eval": {"episodes": 5},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_loop(as_config({**CFG, "output_dir": str(tmp_path_factory.mktemp("runs"))})).run_dir


def test_scale_is_log_only_past_a_span_of_1e3():
    assert choose_scale([1.0, 0.5, 8e23]) == "log"
    assert choose_scale([1.0, 0.5, 499.0]) == "linear" and choose_scale([1.0, 2.0, 1001.0]) == "log"
    assert choose_scale([-1.0, 1.0, 1e9]) == "linear"  # a log axis cannot show values <= 0
    assert choose_scale([1.0, float("inf"), float("nan"), 2.0]) == "linear"  # non-finite values do not decide


def test_learning_curves_go_log_when_one_value_diverges_and_ticks_are_integers():
    df = pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.5, 8e23], "val_loss": [1.1, 0.6, 0.4]})
    fig = learning_curves(df)
    assert fig.axes[0].get_yscale() == "log"
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())  # 3 steps: no 1.5 ticks
    assert learning_curves(df.assign(loss=[1.0, 0.5, 0.3])).axes[0].get_yscale() == "linear"


def test_run_report_regenerates_pngs_with_bands_names_and_test_json(run_dir):
    files = {f.name for f in report(run_dir, episodes=6)}
    assert {"learning_curves.png", "adaptation.png", "sinusoid_fit.png", "summary.md"} <= files
    for name in ("learning_curves", "adaptation", "sinusoid_fit"):
        assert (run_dir / "report" / f"{name}.png").stat().st_size > 5000
    curves = pd.read_csv(run_dir / "report" / "learning_curves.csv")
    assert set(curves["yscale"]) == {"linear"} and set(curves["xlabel"]) == {"meta-step"}
    adapt = pd.read_csv(run_dir / "report" / "adaptation.csv")
    band = adapt[adapt["line"] == "before meta-training (95% CI)"]
    mean = adapt[adapt["line"] == "before meta-training"]
    assert band["x"].tolist() == mean["x"].tolist() == [0, 1, 2]
    np.testing.assert_allclose((band["low"] + band["high"]).to_numpy() / 2, mean["y"].to_numpy(), rtol=1e-12)
    # the band at inner step 0 is 1.96 * std / sqrt(n) of the initial model's query MSE on the 6 test tasks
    config = as_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    learner, dist = build_learner(config), build_distribution(config)
    init = learner.initial_params()
    losses = torch.stack(
        [
            torch.mean((learner.algorithm.predict(init, t.query_x) - t.query_y) ** 2)
            for t in (dist.sample(config.seed, 0, i, None, "test").to("cpu", torch.float64) for i in range(6))
        ]
    )
    half = 1.96 * losses.std(unbiased=True).item() / np.sqrt(6)
    assert (band["high"] - band["low"]).iloc[0] / 2 == pytest.approx(half, rel=1e-9)
    summary = (run_dir / "report" / "summary.md").read_text()
    test = yaml.safe_load((run_dir / "test.json").read_text())
    assert (
        f"Meta-test MSE: {test['mean']:.4f} +- {test['ci95']:.4f} (95% CI) over 5 episodes (the run's test.json)"
        in summary
    )
    assert summary.count("Meta-test") == 1 and "meta-test mse" not in summary  # one line, no repeated prefix


def test_report_reevaluates_only_when_asked(run_dir):
    report(run_dir, episodes=3, evaluate_test=True)
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "over 5 episodes (re-evaluated at step 4)" in summary and "(the run's test.json)" in summary


def basis(x: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(x), np.cos(x)], axis=1)


def test_sinusoid_fit_is_the_true_curve_and_sgd_steps(run_dir):
    report(run_dir, episodes=2)
    data = pd.read_csv(run_dir / "report" / "sinusoid_fit.csv")
    true = data[data["line"] == "true curve"]
    # y = A sin(x - phi) = a sin x + b cos x: a least-squares fit must be exact and pass through the support points
    coef, *_ = np.linalg.lstsq(basis(true["x"].to_numpy()), true["y"].to_numpy(), rcond=None)
    np.testing.assert_allclose(basis(true["x"].to_numpy()) @ coef, true["y"].to_numpy(), atol=1e-5)
    support = data[data["line"] == "5 support points"]
    assert len(support) == 5
    np.testing.assert_allclose(basis(support["x"].to_numpy()) @ coef, support["y"].to_numpy(), atol=1e-4)
    # after 0 steps: the meta-learned model; after 1 step: one hand SGD step on the support MSE
    config = as_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    learner = build_learner(config)
    params = {k: v.to(torch.float64) for k, v in latest_good_state(run_dir)["params"].items()}
    sx = torch.tensor(support["x"].to_numpy())[:, None]
    sy = torch.tensor(support["y"].to_numpy())[:, None]
    grid = torch.tensor(true["x"].to_numpy())[:, None]
    np.testing.assert_allclose(
        data[data["line"] == "after 0 steps"]["y"], learner.algorithm.predict(params, grid)[:, 0].detach(), rtol=1e-5
    )
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = torch.mean((learner.algorithm.predict(leaves, sx) - sy) ** 2)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    stepped = {k: params[k] - 0.02 * grads[k] for k in params}
    np.testing.assert_allclose(
        data[data["line"] == "after 1 step"]["y"],
        learner.algorithm.predict(stepped, grid)[:, 0].detach(),
        rtol=1e-4,
        atol=1e-6,
    )
    assert len(data[data["line"] == "after 10 steps"]) == len(true)


def test_sweep_curves_legends_name_hyperparameters_and_a_diverged_trial_goes_log(tmp_path):
    runs = []
    for i, (lr, last) in enumerate([(0.01, 0.4), (0.1, 8e23)]):
        d = tmp_path / f"trial{i}"
        d.mkdir()
        write_metrics(d, [{"step": 2, "val_loss": 1.0}, {"step": 4, "val_loss": last}])
        runs.append((lr, d, last))
    base = {**CFG, "output_dir": str(tmp_path)}
    spec = {
        "name": "s",
        "base": {"b": {"inline": base}},
        "space": {"algorithm.inner_lr": {"grid": [0.01, 0.1]}},
        "metric": "val_loss",
    }
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    pd.DataFrame(
        {
            "trial_id": ["2adcd_00000", "2adcd_00001"],
            "base": "b",
            "algorithm.inner_lr": [r[0] for r in runs],
            "val_loss_last": [r[2] for r in runs],
            "val_loss_best": [1.0, 1.0],
            "training_iteration": 2,
            "status": "TERMINATED",
            "run_dir": [str(r[1]) for r in runs],
        }
    ).to_parquet(sweep_dir / "results.parquet")
    report(sweep_dir)
    curves = pd.read_csv(sweep_dir / "report" / "sweep_curves.csv")
    assert set(curves["line"]) == {"inner_lr=0.01", "inner_lr=0.1"}  # not the trial ids
    assert set(curves["yscale"]) == {"log"}  # 8e23 vs 0.4
    points = pd.read_csv(sweep_dir / "report" / "sweep.csv")
    assert set(points["yscale"]) == {"log"}
