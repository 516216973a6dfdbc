"""A new user's first hour: each README usage command, run as a subprocess with small step overrides,
exits 0 and prints its first line soon.

"Soon" is measured in this run, not a wall-clock constant: the bound is twice the time this machine
takes right now to start `python -m metaserve --version` (interpreter + imports, the floor of any
command) plus that same startup again for reading a config: a command that computes before it
speaks (a step, an evaluation) misses it on any machine. Not covered: `--address auto` (needs a
running cluster) and `metaserve tune` (sweep validation is tested in test_sweep_schedules.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import OMNIGLOT

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "METASERVE_PROGRESS": "plain"}
ENV.pop("PYTHONUNBUFFERED", None)  # a pipe is block-buffered: the first line must be flushed by the command itself
SMALL = [
    "--set",
    "train.steps=3",
    "--set",
    "train.log_every=2",
    "--set",
    "train.val_tasks=2",
    "--set",
    "eval.episodes=4",
    "--set",
    "train.meta_batch=2",
]


def timed(argv: list[str], cwd: Path, timeout: float = 240) -> tuple[int, float, str]:
    """(exit code, seconds to the first output line, all output) of a subprocess."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first: list[float] = []
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            if not first:
                first.append(time.monotonic() - start)
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=timeout)
    reader.join(timeout=10)
    return code, first[0] if first else float("inf"), "".join(lines)


@pytest.fixture(scope="module")
def startup() -> float:
    code, first, out = timed([sys.executable, "-m", "metaserve", "--version"], ROOT)
    assert code == 0 and out.startswith("metaserve ")
    return first


def check(argv: list[str], startup: float, cwd: Path = ROOT, bound: float | None = None) -> str:
    code, first, out = timed(argv, cwd)
    assert code == 0, out[-3000:]
    limit = bound if bound is not None else 5 * startup  # a loaded CI machine varies by 2x between commands
    assert first <= limit, f"first line after {first:.1f} s, bound {limit:.1f} s (startup {startup:.1f} s): {out[:300]}"
    return out


def run_dir_of(out: str) -> Path:
    return Path(
        [ln for ln in out.splitlines() if ln.startswith("run directory:")][-1].split(":", 1)[1].strip().split(" (")[0]
    )


def test_readme_sinusoid_commands(tmp_path, startup):
    metaserve = [sys.executable, "-m", "metaserve"]
    out = check([*metaserve, "train", "configs/sinusoid-maml.yaml", *SMALL, "--set", f"output_dir={tmp_path}"], startup)
    assert out.splitlines()[0].startswith("loading data: sinusoid")
    run = run_dir_of(out)
    code, _, out = timed([*metaserve, "train", "--resume", str(run), "--set", "train.steps=2"], ROOT)
    assert code == 2 and "train.steps=2 is below step 3" in out  # resuming below the checkpoint is refused, saying so
    out = check([*metaserve, "train", "--resume", str(run), "--set", "train.steps=3"], startup)
    assert "no steps to train" in out  # resuming at the checkpoint's own step says there is nothing to train
    check([*metaserve, "eval", str(run), "--episodes", "5"], startup, bound=6 * startup)  # prints its result only
    out = check([*metaserve, "report", str(run), "--episodes", "3"], startup)
    assert (run / "report" / "sinusoid_fit.png").is_file() and "summary.md" in out
    check([*metaserve, "init", str(tmp_path / "mine")], startup)
    assert (tmp_path / "mine" / "configs" / "sinusoid-maml.yaml").is_file()


def test_readme_python_api_snippet(tmp_path, startup):
    code = (
        "import torch, metaserve\n"
        "result = metaserve.train('configs/sinusoid-maml.yaml', "
        "['train.steps=3', 'train.log_every=2', 'eval.episodes=4', "
        f"'train.val_tasks=2', 'output_dir={tmp_path}'], progress=True)\n"
        "model = metaserve.load(result.run_dir)\n"
        "support_x = torch.rand(10, 1) * 10 - 5\n"
        "adapted = model.adapt(support_x, torch.sin(support_x), steps=10)\n"
        "print('prediction', tuple(adapted.predict(torch.zeros(3, 1)).shape))\n"
    )
    out = check([sys.executable, "-c", code], startup)
    assert "prediction (3, 1)" in out


def test_examples_sinusoid(tmp_path, startup):
    out = check(
        [
            sys.executable,
            "examples/sinusoid_end_to_end.py",
            "--steps",
            "3",
            "--episodes",
            "4",
            "--output-dir",
            str(tmp_path),
        ],
        startup,
    )
    assert "query MSE after 10 inner steps" in out


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot data not found at {OMNIGLOT}")
def test_readme_omniglot_on_ray(tmp_path, startup):
    """The README's Omniglot command (on the Ray backend) with one worker and tiny steps."""
    out = check(
        [
            sys.executable,
            "-m",
            "metaserve",
            "train",
            "configs/omniglot-maml-5w1s.yaml",
            "--set",
            "train.steps=1",
            "--set",
            "runtime.backend=ray",
            "--set",
            "runtime.num_workers=1",
            "--set",
            "train.meta_batch=1",
            "--set",
            "train.val_tasks=1",
            "--set",
            "eval.episodes=1",
            "--set",
            "model.hidden=8",
            "--set",
            f"task.root={OMNIGLOT}",
            "--set",
            f"output_dir={tmp_path}",
        ],
        startup,
    )
    assert out.splitlines()[0].startswith("loading data: omniglot")
