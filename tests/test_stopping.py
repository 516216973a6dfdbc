"""Stopping before train.steps: the wall-clock budget and patience on meta-validation.

The validation curve is made by hand (TrainLoop.validation_columns replaced by a function of the
step), so the step where patience runs out and the best row are derived here, not read off the loop;
the best checkpoint is compared with the step checkpoint the loop wrote at that row, and the budget is
spent by a fake clock that runs out after a known number of steps.
"""

from __future__ import annotations

import json

import pytest
import torch

import metaserve
from metaserve import cli
from metaserve.api import as_config
from metaserve.config import EarlyStopConfig
from metaserve.runtime import loop as loop_module
from metaserve.runtime.loop import TrainLoop, train_loop
from metaserve.runtime.stopping import after_row, improved
from metaserve.store.checkpoint import best_path, latest_good_state, load_state
from metaserve.store.metrics import read_rows

LOG = 2  # steps between log rows
TINY = {
    "name": "tiny",
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 1000,
        "meta_batch": 2,
        "log_every": LOG,
        "checkpoint_every": LOG,
        "keep_checkpoints": 1000,
        "val_tasks": 2,
        "dtype": "float64",
        "early_stop": {"metric": "val_loss", "patience": 3, "min_delta": 0.01},
    },
    "eval": {"episodes": 3},
}
# val_loss at rows 1, 2, ... (steps 2, 4, ...). With min_delta 0.01: row 3 (1.0) is the best; row 4 (0.995)
# beats it by less than min_delta, rows 5-6 do not beat it: three rows without an improvement, so the run
# stops at row 6 = step 12 and hands on the parameters of step 6.
CURVE = [2.0, 1.5, 1.0, 0.995, 1.2, 1.05, 0.5, 0.4]
STOP_STEP, BEST_STEP = 12, 6


def config(tmp_path, **train):
    return as_config({**TINY, "output_dir": str(tmp_path), "train": {**TINY["train"], **train}})


@pytest.fixture
def curve(monkeypatch):
    """Validation rows read off CURVE by step (so a resumed run sees the same curve)."""

    def columns(self):
        return {"val_loss": CURVE[self.state.step // LOG - 1]}

    monkeypatch.setattr(TrainLoop, "validation_columns", columns)


def test_patience_stops_at_the_derived_step_and_hands_on_the_best_row(tmp_path, curve):
    result = train_loop(config(tmp_path))
    assert [r["step"] for r in read_rows(result.run_dir)] == list(range(LOG, STOP_STEP + 1, LOG))
    assert result.stopped is not None and f"step {BEST_STEP}" in result.stopped
    assert latest_good_state(result.run_dir)["step"] == STOP_STEP  # the final checkpoint, to resume from
    best = load_state(best_path(result.run_dir))
    at_best = load_state(result.run_dir / "checkpoints" / f"{BEST_STEP:08d}")  # written by the step checkpointing
    assert best["step"] == BEST_STEP
    for k, v in at_best["params"].items():
        assert torch.equal(best["params"][k], v), k
        assert torch.equal(result.params[k], v), k
    model = metaserve.load(result.run_dir)  # the run directory loads its best checkpoint
    assert model.step == BEST_STEP and all(torch.equal(model.params[k], v) for k, v in at_best["params"].items())
    test = json.loads((result.run_dir / "test.json").read_text())
    assert (test["params_step"], test["trained_steps"]) == (BEST_STEP, STOP_STEP)
    again = metaserve.evaluate_checkpoint(result.run_dir / "checkpoints" / f"{BEST_STEP:08d}")
    assert test["mean"] == pytest.approx(again.mean, rel=1e-9)  # the meta-test tested the best row's parameters


def test_a_resumed_run_keeps_the_best_so_far_and_the_patience_count(tmp_path, curve):
    straight = train_loop(config(tmp_path / "a"), final_eval=False)
    # interrupted at step 8: row 4 has used one row of patience; a resume that forgot the count would stop
    # at step 14, one that forgot the best value would take row 4 (0.995) or row 6 (1.05)... as a new best
    first = train_loop(config(tmp_path / "b", steps=8), final_eval=False)
    assert first.stopped is None and load_state(best_path(first.run_dir))["step"] == BEST_STEP
    assert cli.main(["train", "--resume", str(first.run_dir), "--set", "train.steps=1000"]) == 0
    assert latest_good_state(first.run_dir)["step"] == STOP_STEP
    best, ref = load_state(best_path(first.run_dir)), load_state(best_path(straight.run_dir))
    assert best["step"] == BEST_STEP and best["best"] == ref["best"]
    for k, v in ref["params"].items():
        assert torch.equal(best["params"][k], v), k
    # a run that stopped early has nothing left to train, however far train.steps is raised
    assert cli.main(["train", "--resume", str(first.run_dir), "--set", "train.steps=2000"]) == 0
    assert latest_good_state(first.run_dir)["step"] == STOP_STEP


def test_ray_backend_stops_where_local_does(ray_session, tmp_path, curve):
    local = train_loop(config(tmp_path / "local"), final_eval=False)
    ray_run = train_loop(
        as_config(config(tmp_path / "ray"), ["runtime.backend=ray", "runtime.num_workers=2"]), final_eval=False
    )
    assert ray_run.stopped == local.stopped
    assert latest_good_state(ray_run.run_dir)["step"] == STOP_STEP
    for k, v in local.params.items():
        torch.testing.assert_close(ray_run.params[k], v, rtol=1e-12, atol=1e-14)


class StepBudget:
    """A budget spent after `spent()` has been asked `calls` times: once per meta-step."""

    calls = 7

    def __init__(self, seconds):
        self.seconds, self.asked = seconds, 0

    def spent(self) -> bool:
        self.asked += 1
        return self.asked >= self.calls


def test_budget_is_checked_after_every_step_and_ends_with_a_checkpoint_and_meta_test(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "Budget", StepBudget)
    cfg = config(tmp_path, time_budget_s=60, log_every=5, checkpoint_every=10, early_stop=None)
    result = train_loop(cfg)
    # spent after step 7: between log rows (5, 10), so the loop itself logs and checkpoints step 7
    assert result.stopped == "train.time_budget_s=60 spent at step 7"
    assert [r["step"] for r in read_rows(result.run_dir)] == [5, 7]
    assert latest_good_state(result.run_dir)["step"] == 7
    assert not best_path(result.run_dir).exists()  # no early stopping: no best checkpoint, the last one is used
    test = json.loads((result.run_dir / "test.json").read_text())
    assert (test["params_step"], test["trained_steps"], test["stopped"]) == (7, 7, result.stopped)
    assert metaserve.load(result.run_dir).step == 7


def test_a_real_budget_ends_a_long_run_cleanly(tmp_path):
    result = train_loop(config(tmp_path, steps=10**7, time_budget_s=1.0, log_every=1000, checkpoint_every=1000))
    step = latest_good_state(result.run_dir)["step"]
    assert result.stopped == f"train.time_budget_s=1 spent at step {step}" and 0 < step < 10**7
    assert read_rows(result.run_dir)[-1]["step"] == step
    assert (result.run_dir / "test.json").is_file()


@pytest.mark.parametrize(
    "metric, value, best, want",
    [
        ("val_loss", 0.9, 1.0, True),
        ("val_loss", 0.995, 1.0, False),  # better by less than min_delta 0.01
        ("val_loss", 1.1, 1.0, False),
        ("val_acc", 0.92, 0.9, True),
        ("val_acc", 0.905, 0.9, False),
        ("val_acc", 0.5, 0.9, False),
        ("val_acc", 0.1, None, True),  # the first row is the best so far
        ("val_loss", float("nan"), None, False),
    ],
)
def test_improvement_is_by_more_than_min_delta_in_the_metrics_direction(metric, value, best, want):
    stop = EarlyStopConfig(metric=metric, patience=2, min_delta=0.01)
    assert improved(value, best, stop.maximise, stop.min_delta) is want
    record = {} if best is None else {"value": best, "step": 4, "since": 1}
    new, is_best = after_row(record, value, 6, stop)
    assert is_best is want
    assert new == ({"value": value, "step": 6, "since": 0} if want else {**record, "since": record.get("since", 0) + 1})
