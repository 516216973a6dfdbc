"""Shared helpers of the benchmark scripts: machine description, result files, markdown tables,
time-budgeted training and the meta-test every accuracy/MSE table uses.

The scripts are modules of the `benchmarks` package, run from the project root as
`python -m benchmarks.<name>`, so they import this checkout's `metaserve` without any path edits.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the project root (holds `metaserve/`)
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (printed above every table and saved with the results)."""
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # pragma: no cover
        ray_version = "absent"
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ray": ray_version,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "command": command_line(),
    }


def command_line() -> str:
    """The command that is running, as it would be typed from the project root (`python -m benchmarks.x ...`)."""
    exe = Path(sys.executable)
    python = exe.relative_to(ROOT).as_posix() if exe.is_relative_to(ROOT) else sys.executable
    script = Path(sys.argv[0]).resolve()
    if script.parent == ROOT / "benchmarks":
        target = ["-m", f"benchmarks.{script.stem}"]
    else:
        target = [script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]]
    return " ".join([python, *target, *sys.argv[1:]])


def relative(path: Path | str) -> str:
    """`path` relative to the project root when it is inside it (for result files and printed paths)."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['nproc']} CPU ({info['cpu']}), {info['mem_gib']} GiB, GPU {info['gpu']}; "
        f"python {info['python']}, torch {info['torch']} ({info['torch_threads']} threads), ray {info['ray']}; "
        f"load average {info['loadavg_at_start']}; {info['date']}"
    )
    print(f"command: {info['command']}")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table of dict rows (missing cells left blank)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(
    name: str, rows: Sequence[dict[str, Any]], info: dict[str, Any], extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write results/<name>.csv (the rows) and results/<name>.json (rows, machine, extra)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    csv_path, json_path = RESULTS / f"{name}.csv", RESULTS / f"{name}.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in columns})
    info = {**info, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    json_path.write_text(json.dumps({"machine": info, "rows": list(rows), **(extra or {})}, indent=2, default=str))
    return csv_path, json_path


def train_for(config, budget_s: float, progress=None, with_status: bool = False):
    """Run `train_loop` until `train.steps`, its early-stopping rule, or `budget_s` seconds, whichever is first.

    The budget is the config's own `train.time_budget_s` (checked after every step; the run writes its
    checkpoint where it stops), so a benchmark stops as a user's budgeted run does. Returns (run_dir,
    params, step, seconds, rows), params and step those `metaserve.load` gives (the best validation row
    with early stopping); with `with_status=True` also a status string: "ok", why training stopped
    early, or, for a run that stops on a non-finite update (then reported, not raised), "diverged: ..."
    with its last good checkpoint returned.
    """
    from metaserve.api import as_config, load
    from metaserve.runtime.loop import train_loop
    from metaserve.runtime.work import NonFiniteUpdate
    from metaserve.store.metrics import read_metrics
    from metaserve.store.rundir import new_run_dir

    if math.isfinite(budget_s):
        config = as_config(config, [f"train.time_budget_s={budget_s}"])
    run_dir = new_run_dir(config)
    t0 = time.perf_counter()

    def on_log(row, _ckpt):
        if progress is not None:
            progress(
                f"step {row['step']}: loss {row['loss']:.4f}"
                + (f", acc {100 * row['acc']:.1f}%" if "acc" in row else "")
                + (f", val acc {100 * row['val_acc']:.1f}%" if "val_acc" in row else "")
                + f", {row['tasks_per_s']:.1f} tasks/s, {time.perf_counter() - t0:.0f} s"
            )

    status = "ok"
    try:
        result = train_loop(config, run_dir=run_dir, final_eval=False, on_log=on_log)
        status = f"stopped early: {result.stopped}" if result.stopped else status
    except NonFiniteUpdate as err:
        if not with_status or not any((run_dir / "checkpoints").glob("0*")):
            raise
        status = "diverged: " + str(err).split(" from ")[0]
        if progress is not None:
            progress(status)
    seconds = time.perf_counter() - t0
    model = load(run_dir)
    out = (run_dir, model.params, model.step, seconds, read_metrics(run_dir))
    return (*out, status) if with_status else out


def meta_test(config, params, *, episodes: int, steps: int | None = None, overrides: Sequence[str] = ()):
    """Meta-test `params` on `config`'s held-out split (with `overrides`, e.g. `task.query=15`).

    Returns (EvalResult, seconds). Every accuracy and MSE table of the benchmarks goes through here, so
    they share one protocol: `episodes` test episodes drawn from the test stream of `config.seed`.
    """
    from metaserve.api import as_config
    from metaserve.evaluation import evaluate
    from metaserve.experiment import build_distribution, build_learner

    test_config = as_config(config, list(overrides)) if overrides else config
    learner = build_learner(test_config)
    t0 = time.perf_counter()
    result = evaluate(learner, params, build_distribution(test_config), episodes=episodes, steps=steps)
    return result, time.perf_counter() - t0
