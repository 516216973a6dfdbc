"""Resume semantics a user relies on: a resumed run keeps its config, an extension of train.steps is
recorded (not a rewrite of config.yaml) and lands on the parameters of an uninterrupted run, and
--restart starts over in a new folder leaving the old one as it was."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml

import metaserve
from metaserve import cli
from metaserve.api import as_config
from metaserve.config import ConfigError
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.rundir import read_run_config

TINY = {
    "name": "tiny",
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {"steps": 4, "meta_batch": 2, "log_every": 2, "checkpoint_every": 2, "val_tasks": 0},
    "eval": {"episodes": 2},
}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_extending_a_run_records_the_change_and_matches_an_uninterrupted_run(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs")}))
    first = train_loop(as_config(cfg))
    config_before = _digest(first.run_dir / "config.yaml")
    assert cli.main(["train", "--resume", str(first.run_dir), "--set", "train.steps=8"]) == 0
    assert _digest(first.run_dir / "config.yaml") == config_before  # never rewritten
    record = [json.loads(line) for line in (first.run_dir / "resume.jsonl").read_text().splitlines()]
    assert record[0]["step"] == 4 and record[0]["changes"] == {"train.steps": [4, 8]}
    assert read_run_config(first.run_dir).train.steps == 8  # config.yaml plus the recorded change
    straight = train_loop(as_config(cfg, ["train.steps=8", f"output_dir={tmp_path / 'ref'}"]), final_eval=False)
    state = latest_good_state(first.run_dir)
    assert state["step"] == 8
    for k, v in straight.params.items():
        assert torch.equal(state["params"][k], v), k
    # a later plain resume keeps the extension: nothing left to train, no new record
    assert cli.main(["train", "--resume", str(first.run_dir)]) == 0
    assert len((first.run_dir / "resume.jsonl").read_text().splitlines()) == 1
    assert "resumed at step 8" in capsys.readouterr().out


def test_restart_uses_a_new_folder_and_leaves_the_old_one(tmp_path):
    first = train_loop(as_config({**TINY, "output_dir": str(tmp_path / "runs")}), final_eval=False)
    before = {p.name: _digest(p) for p in first.run_dir.rglob("*") if p.is_file()}
    assert cli.main(["train", "--resume", str(first.run_dir), "--restart", "--set", "algorithm.inner_lr=0.02"]) == 0
    assert {p.name: _digest(p) for p in first.run_dir.rglob("*") if p.is_file()} == before
    (new,) = [p for p in (tmp_path / "runs").iterdir() if p != first.run_dir]
    assert read_run_config(new).algorithm.inner_lr == 0.02 and latest_good_state(new)["step"] == 4


def test_api_resume_refuses_a_changed_hyperparameter(tmp_path):
    first = train_loop(as_config({**TINY, "output_dir": str(tmp_path / "runs")}), final_eval=False)
    changed = {**TINY, "output_dir": str(tmp_path / "runs"), "algorithm": {**TINY["algorithm"], "inner_lr": 0.5}}
    with pytest.raises(ConfigError, match="algorithm.inner_lr"):
        metaserve.train(changed, resume=first.run_dir)
    assert not (first.run_dir / "resume.jsonl").exists()
