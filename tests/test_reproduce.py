"""configs/paper and benchmarks/reproduce.py: every protocol config validates and cites its source; the
full-Omniglot configs run end to end on a synthetic stand-in with the official zips' layout; the
runner's table row holds its fields, and its MSE is the one a hand-written MAML adaptation gives."""

from __future__ import annotations

import csv
import math
import re
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import reproduce
from metaserve.api import as_config, load
from metaserve.config import SinusoidTaskConfig, load_config
from metaserve.runtime.loop import train_loop
from metaserve.tasks import make_distribution

from conftest import ROOT

PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
FULL = [p for p in PAPER if p.name.startswith("omniglot-full")]


def test_the_paper_set_is_complete() -> None:
    names = {p.stem for p in PAPER}
    sinusoid = {f"sinusoid-{m}-k{k}" for m in ("maml", "fomaml", "reptile") for k in (5, 10, 20)}
    methods = ("maml", "fomaml", "reptile", "protonet", "matching", "relation", "siamese")
    omniglot = {f"omniglot-{form}-{m}-{w}w1s" for form in ("full", "minimal") for m in methods for w in (5, 20)}
    assert names == sinusoid | omniglot
    assert reproduce.cpu_set()[:9] == sorted(sinusoid) and len(reproduce.cpu_set()) == 9 + 14


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_validates_and_cites_its_source(path: Path) -> None:
    config = load_config(path)
    comment = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert config.name == path.stem
    assert re.search(r"(19|20)\d\d", comment) and any(w in comment for w in ("Table", "section", "Fig.")), (
        "no paper cited"
    )
    published, source = reproduce.PUBLISHED[path.stem]
    assert source and (published is None or published > 0)
    if config.task.name == "omniglot":
        assert config.model.name == "conv4" and config.model.hidden == 64 and config.task.rotations
        assert config.task.shots == 1 and config.task.ways in (5, 20)
        official = ["images_background.zip"], ["images_evaluation.zip"]
        assert (config.task.train.sources, config.task.test.sources) == official or "minimal" in path.stem


def _png(rng: np.random.Generator) -> bytes:
    """A 105x105 one-bit drawing: black random strokes on white, like an Omniglot character."""
    pixels = np.ones((105, 105), bool)
    for _ in range(3):
        r, c = rng.integers(10, 95, size=2)
        pixels[r - 4 : r + 4, max(c - 30, 0) : c + 30] = False
    out = BytesIO()
    Image.fromarray(pixels).convert("1").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def official_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images_background.zip and images_evaluation.zip as the official ones are laid out
    (<top>/<Alphabet>/<character>/<drawer>_<NN>.png, 20 drawers), with 2 alphabets x 3 characters each."""
    root = tmp_path_factory.mktemp("omniglot-official")
    rng = np.random.default_rng(0)
    for top in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{top}.zip", "w") as archive:
            for alphabet in ("Alpha", "Beta"):
                for c in range(1, 4):
                    for drawer in range(1, 21):
                        archive.writestr(f"{top}/{alphabet}/character{c:02d}/{c:04d}_{drawer:02d}.png", _png(rng))
    return root


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_protocol_config_runs_end_to_end_on_the_official_layout(
    path: Path, official_layout: Path, tmp_path: Path
) -> None:
    config = as_config(
        path,
        [
            f"task.root={official_layout}",
            f"task.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path}",
            "model.hidden=4",
            "train.steps=1",
            "train.meta_batch=1",
            "train.log_every=1",
            "train.checkpoint_every=1",
            "train.val_tasks=0",
            "eval.episodes=2",
            "train.device=cpu",
        ],
    )
    result = train_loop(config, tensorboard=False)
    assert result.test.metric == "acc" and result.test.episodes == 2 and math.isfinite(result.metrics["loss"])


def _mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ params["0.weight"].T + params["0.bias"])
    h = torch.relu(h @ params["2.weight"].T + params["2.bias"])
    return h @ params["4.weight"].T + params["4.bias"]


def test_runner_row_holds_the_fields_and_the_hand_computed_mse(tmp_path: Path) -> None:
    row = reproduce.run_entry("sinusoid-maml-k5", max_steps=3, episodes=8, output_dir=tmp_path / "runs")
    assert {k: row[k] for k in ("method", "benchmark", "steps", "paper_steps", "stopped_short", "published")} == {
        "method": "maml",
        "benchmark": "sinusoid K=5",
        "steps": 3,
        "paper_steps": 70000,
        "stopped_short": True,
        "published": 1.13,
    }
    assert "Meta-SGD" in row["source"] and row["protocol"] and row["wall_s"] > 0 and row["status"] == "ok"
    assert row["metric"] == "mse after 10 steps" and row["result"] == row["result_10_steps"]

    # Independent: one SGD step on each test task's support MSE, by hand, then the query MSE (Finn et al. eq. 1).
    model = load(row["run_dir"])
    dist = make_distribution(SinusoidTaskConfig(shots=5, query=5))
    errors = []
    for i in range(8):
        task = dist.sample(0, 0, i, None, "test")
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in model.params.items()}
        grads = torch.autograd.grad(((_mlp(theta, task.support_x) - task.support_y) ** 2).mean(), list(theta.values()))
        phi = {k: v - 0.01 * g for (k, v), g in zip(theta.items(), grads)}
        errors.append(float(((_mlp(phi, task.query_x) - task.query_y) ** 2).mean().detach()))
    assert row["result_1_step"] == pytest.approx(np.mean(errors), rel=1e-4)
    assert row["ci95_1_step"] == pytest.approx(1.96 * np.std(errors, ddof=1) / math.sqrt(8), rel=1e-4)

    table = tmp_path / "reproduce.csv"
    reproduce.append_row(row, table)
    reproduce.append_row(row | {"entry": "second"}, table)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["entry"] for r in rows] == ["sinusoid-maml-k5", "second"] and list(rows[0]) == reproduce.COLUMNS
    markdown = table.with_suffix(".md").read_text().splitlines()
    assert len(markdown) == 4 and "| sinusoid-maml-k5 | maml | sinusoid K=5 |" in markdown[2]


def test_runner_with_early_stopping_tests_the_best_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made validation curve: best at step 2, two rows without improvement, so training stops at step 4
    and the row is the meta-test of the step-2 checkpoint."""
    from metaserve.runtime.loop import TrainLoop

    curve = [3.0, 2.0, 2.5, 2.6, 1.0]
    monkeypatch.setattr(TrainLoop, "validation_columns", lambda self: {"val_loss": curve[self.state.step - 1]})
    row = reproduce.run_entry(
        "sinusoid-maml-k5",
        max_steps=20,
        log_every=1,
        episodes=8,
        output_dir=tmp_path / "runs",
        budget_s=600,
        early_stop=("val_loss", 2),
    )
    assert (row["steps"], row["best_step"], row["status"]) == (4, 2, "ok")
    assert "val_loss has not improved" in row["stopped"] and row["val_curve"] == "val_loss 1:3 2:2 3:2.5 4:2.6"
    at_best = load(Path(row["run_dir"]) / "checkpoints" / "00000002")
    config = reproduce.paper_config("sinusoid-maml-k5", max_steps=20, log_every=1, output_dir=tmp_path / "x")
    want, _ = reproduce.meta_test(config, at_best.params, episodes=8, steps=1)
    assert row["result_1_step"] == pytest.approx(want.mean, rel=1e-9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-entry"], "unknown configs/paper entry 'no-such-entry'; choose from: sinusoid-fomaml-k10"),
        (["sinusoid-maml-k5", "--max-steps", "0"], "--max-steps=0 must be positive"),
        (["sinusoid-maml-k5", "--budget-s", "-1"], "--budget-s=-1.0 must be positive"),
        (["sinusoid-maml-k5", "--early-stop", "val_acc"], "early_stop.metric='val_acc' is not a validation"),
        ([], "name at least one configs/paper entry or pass --cpu-set"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "reproduce.csv"
    with pytest.raises(SystemExit):
        reproduce.main([*argv, "--table", str(table)])
    assert message in capsys.readouterr().err and not table.exists()
