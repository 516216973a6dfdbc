"""The Tune entry point runs the same learner loop: same parameters as `train_loop`, workers reserved per trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray import tune

from metaserve.api import as_config
from metaserve.config import config_to_dict
from metaserve.runtime.loop import train_loop
from metaserve.runtime.tune_trainable import metaserve_trainable, trial_resources
from metaserve.store.checkpoint import load_state

from references import tensorboard_scalars

BASE = {
    "name": "tune-tiny",
    "seed": 5,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "algorithm": {"name": "fomaml", "inner_lr": 0.02, "inner_steps": 2},
    "train": {
        "steps": 6,
        "meta_batch": 4,
        "log_every": 3,
        "checkpoint_every": 3,
        "val_tasks": 4,
        "dtype": "float64",
        "device": "cpu",
    },
    "eval": {"episodes": 8},
    "runtime": {"backend": "ray", "num_workers": 1, "cpus_per_worker": 1},
}


def test_trial_resources_reserve_learner_and_workers():
    pgf = trial_resources(as_config({**BASE, "runtime": {**BASE["runtime"], "num_workers": 3, "gpus_per_worker": 0.5}}))
    assert pgf.bundles == [{"CPU": 1.0}] + [{"CPU": 1.0, "GPU": 0.5}] * 3


def test_tune_trials_equal_train_loop(ray_session, tmp_path):
    lrs = [0.02, 0.05]
    space = config_to_dict(as_config(BASE)) | {"output_dir": str(tmp_path)}
    space["algorithm"]["inner_lr"] = tune.grid_search(lrs)
    tuner = tune.Tuner(
        tune.with_resources(metaserve_trainable, trial_resources(as_config(BASE))),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="t", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    for result in results:
        lr = result.config["algorithm"]["inner_lr"]
        assert result.metrics["training_iteration"] == 2  # one report per log row; the last carries the meta-test
        assert "test_mse" in result.metrics
        # Tune's TensorBoard logger writes the trial's reports against meta-steps
        board = tensorboard_scalars(result.path)
        assert board["ray/tune/val_loss"] == pytest.approx(
            {3: result.metrics_dataframe["val_loss"].iloc[0], 6: result.metrics["val_loss"]}, rel=1e-6
        )
        state = load_state(Path(result.checkpoint.path))
        assert state["step"] == 6
        cfg = as_config(
            {
                **BASE,
                "runtime": {"backend": "local"},
                "output_dir": str(tmp_path / "local"),
                "algorithm": {**BASE["algorithm"], "inner_lr": lr},
            }
        )
        expected = train_loop(cfg, final_eval=False).params
        for k in expected:
            torch.testing.assert_close(state["params"][k], expected[k], rtol=1e-10, atol=1e-12)
