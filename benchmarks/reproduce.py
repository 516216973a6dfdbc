"""Reproduce the papers: train a configs/paper entry, meta-test it, append a row to the results table.

One row per run: method, benchmark, protocol, steps trained (and the paper's count), wall time, the
result +- 95% CI over the test episodes, and the published figure with its source (PUBLISHED below).
Rows are appended to benchmarks/results/reproduce.csv and the whole table is rewritten as
benchmarks/results/reproduce.md. Sinusoid entries report the query MSE after 1 and 10 SGD steps (and
after the config's own eval_inner_steps); Omniglot entries the accuracy after the config's test-time
adaptation, on 15 query images per class. The batch-norm modes are the config's (`model.batch_norm` in
training, `eval.batch_norm` at meta-test) and are written in each row's "bn_mode".

  .venv/bin/python -m benchmarks.reproduce sinusoid-maml-k10                     # one entry, the paper's step count
  .venv/bin/python -m benchmarks.reproduce --cpu-set --budget-s 120              # sinusoid first, then minimal Omniglot
  .venv/bin/python -m benchmarks.reproduce omniglot-minimal-protonet-5w1s --budget-s 1200 \
      --early-stop val_acc --patience 10 --log-every 250                         # to convergence, at most 20 minutes

A cap (`--max-steps`, `--budget-s`) stops a run short of the paper's step count; the row says so. The
budget is the run's own `train.time_budget_s` (checked after every step; the run checkpoints where it
stops). `--early-stop METRIC --patience N` sets `train.early_stop`: training stops when METRIC has not
improved for N log rows, and the row is the meta-test of the best validation row's checkpoint
(checkpoints/best.pt, what `metaserve.load` gives), with the step it came from in "best_step".
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import metaserve
from benchmarks.common import RESULTS, ROOT, command_line, machine, markdown_table, meta_test, relative, train_for
from metaserve.api import as_config
from metaserve.config import Config

PAPER = ROOT / "configs" / "paper"
RUNS = RESULTS / "runs" / "reproduce"
COLUMNS = [
    "date",
    "entry",
    "method",
    "benchmark",
    "protocol",
    "steps",
    "best_step",
    "paper_steps",
    "stopped_short",
    "stopped",
    "wall_s",
    "cpu_s",
    "eval_s",
    "metric",
    "result",
    "ci95",
    "result_1_step",
    "ci95_1_step",
    "result_10_steps",
    "ci95_10_steps",
    "episodes",
    "published",
    "source",
    "bn_mode",
    "status",
    "machine",
    "command",
    "run_dir",
    "val_curve",
]

SHOWN = [  # the markdown table's columns
    "entry",
    "method",
    "benchmark",
    "protocol",
    "steps",
    "best_step",
    "paper_steps",
    "stopped",
    "wall_s",
    "cpu_s",
    "metric",
    "result",
    "ci95",
    "result_1_step",
    "result_10_steps",
    "published",
    "source",
    "bn_mode",
    "status",
]

# Published figures: (value, what it measures, source). Sinusoid: MSE after 1 step; Omniglot: 1-shot accuracy %.
_OMNIGLOT = {  # method: ((5-way, 20-way), source), full Omniglot, each paper's protocol
    "maml": ((98.7, 95.8), "Finn et al. 2017 Table 1"),
    "fomaml": ((98.3, 89.4), "Finn et al. 2017 Table 1 (5-way); Nichol et al. 2018 Table 1 (20-way)"),
    "reptile": ((97.68, 89.43), "Nichol et al. 2018 Table 1, Reptile + transduction"),
    "protonet": ((98.8, 96.0), "Snell et al. 2017 Table 1"),
    "matching": ((98.1, 93.8), "Vinyals et al. 2016 Table 1"),
    "relation": ((99.6, 97.6), "Sung et al. 2018 Table 1"),
    "siamese": ((96.7, 88.0), "Vinyals et al. 2016 Table 1 (Koch et al. 2015 network)"),
}
_META_SGD = "Li et al. 2017 (Meta-SGD) Table 1, MAML row, MSE after 1 step"
PUBLISHED: dict[str, tuple[float | None, str]] = {
    "sinusoid-maml-k5": (1.13, _META_SGD),
    "sinusoid-maml-k10": (0.77, _META_SGD),
    "sinusoid-maml-k20": (0.48, _META_SGD),
    **{
        f"sinusoid-{m}-k{k}": (None, "none published (qualitative figures only)")
        for m in ("fomaml", "reptile")
        for k in (5, 10, 20)
    },
    **{
        f"omniglot-{form}-{m}-{w}w1s": (acc[i], src)
        for m, (acc, src) in _OMNIGLOT.items()
        for i, w in enumerate((5, 20))
        for form in ("full", "minimal")
    },
}


def entries() -> list[str]:
    """Names of the configs/paper entries (file stems), sinusoid first."""
    names = sorted(p.stem for p in PAPER.glob("*.yaml"))
    return sorted(names, key=lambda n: not n.startswith("sinusoid"))


def cpu_set() -> list[str]:
    """The entries that run on the data shipped here: every sinusoid entry, then the minimal Omniglot ones."""
    return [n for n in entries() if n.startswith("sinusoid") or n.startswith("omniglot-minimal")]


def check_names(names: Sequence[str]) -> None:
    """Reject an unknown entry before any work, naming it and the entries there are."""
    known = entries()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown configs/paper entry {name!r}; choose from: {', '.join(known)}")


def paper_config(
    name: str,
    *,
    max_steps: int | None = None,
    log_every: int | None = None,
    output_dir: Path = RUNS,
    overrides: Sequence[str] = (),
    budget_s: float | None = None,
    early_stop: tuple[str, int] | None = None,
) -> Config:
    """The entry's config: steps capped at `max_steps`, checkpointed at every log row, with the run's own
    time budget (`train.time_budget_s`) and early-stopping rule ((metric, patience) -> `train.early_stop`)."""
    base = as_config(str(PAPER / f"{name}.yaml"))
    steps = min(base.train.steps, max_steps) if max_steps else base.train.steps
    every = log_every or min(base.train.log_every, max(1, steps // 10))
    stopping = [f"train.time_budget_s={budget_s}"] if budget_s else []
    if early_stop is not None:
        stopping.append(f"train.early_stop={{metric: {early_stop[0]}, patience: {early_stop[1]}}}")
    return as_config(
        base,
        [
            f"train.steps={steps}",
            f"train.log_every={every}",
            f"train.checkpoint_every={every}",
            f"output_dir={output_dir}",
            *stopping,
            *overrides,
        ],
    )


def describe(name: str, config: Config) -> dict[str, str]:
    """Method, benchmark and protocol of an entry, as the table prints them."""
    task = config.task
    if task.name == "sinusoid":
        return {
            "method": config.algorithm.name,
            "benchmark": f"sinusoid K={task.shots}",
            "protocol": "Finn et al. 2017 sec. 5.1 task distribution",
            "bn_mode": "no batch norm (mlp)",
        }
    form = "full-Omniglot (background/evaluation zips)" if "-full-" in name else "minimal-background (project split)"
    return {
        "method": config.algorithm.name,
        "benchmark": f"omniglot {task.ways}-way {task.shots}-shot",
        "protocol": form,
        "bn_mode": f"train {config.model.batch_norm}, meta-test {config.eval.batch_norm}",
    }


def run_entry(
    name: str,
    *,
    max_steps: int | None = None,
    budget_s: float | None = None,
    episodes: int = 600,
    log_every: int | None = None,
    output_dir: Path = RUNS,
    overrides: Sequence[str] = (),
    early_stop: tuple[str, int] | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train entry `name` (capped by steps, `budget_s` and `early_stop`), meta-test it, return its table row."""
    check_names([name])
    paper_steps = as_config(str(PAPER / f"{name}.yaml")).train.steps
    config = paper_config(
        name,
        max_steps=max_steps,
        log_every=log_every,
        output_dir=output_dir,
        overrides=overrides,
        budget_s=budget_s,
        early_stop=early_stop,
    )
    cpu0 = time.process_time()  # CPU seconds beside wall seconds: the cores are shared, the budget is wall-clock
    run_dir, _, _, wall_s, metrics, status = train_for(config, math.inf, progress=progress, with_status=True)
    cpu_s = time.process_time() - cpu0
    model = metaserve.load(run_dir)  # best.pt with early stopping, else the last checkpoint: the public API's choice
    steps = int(metrics["step"].iloc[-1]) if len(metrics) else model.step
    stopped = status.removeprefix("stopped early: ") if status.startswith("stopped early") else ""
    row: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "entry": name,
        **describe(name, config),
        "steps": steps,
        "best_step": model.step if config.train.early_stop is not None else "",
        "paper_steps": paper_steps,
        "stopped_short": steps < paper_steps,
        "stopped": stopped,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "episodes": episodes,
        "status": "ok" if stopped else status,
        "run_dir": relative(run_dir),
        "val_curve": val_curve(metrics),
    }
    t0 = time.perf_counter()
    if config.task.name == "sinusoid":
        final_k = config.algorithm.eval_inner_steps or config.algorithm.inner_steps
        for k in sorted({1, 10, final_k}):
            r, _ = meta_test(config, model.params, episodes=episodes, steps=k)
            if k in (1, 10):
                suffix = "1_step" if k == 1 else "10_steps"
                row[f"result_{suffix}"], row[f"ci95_{suffix}"] = r.mean, r.ci95
            if k == final_k:
                row["metric"], row["result"], row["ci95"] = f"mse after {k} steps", r.mean, r.ci95
    else:
        r, _ = meta_test(config, model.params, episodes=episodes, overrides=["task.query=15"])
        steps_at_test = len(r.curve) - 1
        row["metric"] = "acc %" + (f" after {steps_at_test} steps" if steps_at_test else "")
        row["result"], row["ci95"] = 100 * r.mean, 100 * r.ci95
    row["eval_s"] = round(time.perf_counter() - t0, 1)
    row["published"], row["source"] = PUBLISHED.get(name, (None, "no entry in PUBLISHED"))
    return row


def val_curve(metrics) -> str:
    """The meta-validation curve of a run's metric rows, "step:value" pairs (val_acc, else val_loss)."""
    column = next((c for c in ("val_acc", "val_loss") if c in metrics), None)
    if column is None:
        return ""
    return f"{column} " + " ".join(f"{int(r.step)}:{getattr(r, column):.4g}" for r in metrics.itertuples())


def append_row(row: dict[str, Any], table: Path) -> None:
    """Append `row` to the CSV `table` (rewritten whole, under COLUMNS) and rewrite the markdown table beside it."""
    table.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if table.exists():
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))  # a table written with other columns is rewritten under these
    rows.append({c: _cell(row.get(c)) for c in COLUMNS})
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table.with_suffix(".md").write_text(markdown_table(rows, SHOWN) + "\n")


def _cell(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train and meta-test configs/paper entries, append to the results table")
    p.add_argument("names", nargs="*", help="configs/paper entries (file stems), e.g. sinusoid-maml-k10")
    p.add_argument("--cpu-set", action="store_true", help="every sinusoid entry, then every minimal Omniglot entry")
    p.add_argument("--max-steps", type=int, default=None, help="cap train.steps (default: the paper's count)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="training seconds per entry: the run's train.time_budget_s"
    )
    p.add_argument(
        "--early-stop", metavar="METRIC", default=None, help="train.early_stop.metric, e.g. val_acc (with --patience)"
    )
    p.add_argument("--patience", type=int, default=5, help="train.early_stop.patience: log rows without improvement")
    p.add_argument("--episodes", type=int, default=600, help="meta-test episodes")
    p.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="steps between log rows, validation and checkpoints (default: the config's, at most steps // 10)",
    )
    p.add_argument("--set", action="append", default=[], help="extra config override for every entry")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of this process")
    p.add_argument("--table", type=Path, default=RESULTS / "reproduce.csv")
    a = p.parse_args(argv)
    names = [*a.names, *(cpu_set() if a.cpu_set else [])]
    if not names:
        p.error("name at least one configs/paper entry or pass --cpu-set")
    for flag, value in (
        ("--max-steps", a.max_steps),
        ("--budget-s", a.budget_s),
        ("--episodes", a.episodes),
        ("--log-every", a.log_every),
        ("--patience", a.patience),
    ):
        if value is not None and value <= 0:
            p.error(f"{flag}={value} must be positive")
    early_stop = (a.early_stop, a.patience) if a.early_stop else None
    kw = dict(max_steps=a.max_steps, log_every=a.log_every, overrides=a.set, budget_s=a.budget_s, early_stop=early_stop)
    try:
        check_names(names)
        for name in names:  # every config validated before the first run starts
            paper_config(name, **kw)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(a.threads)
    info = machine()
    where = f"{info['nproc']} CPU ({info['cpu']}), GPU {info['gpu']}"
    for name in names:
        print(f"{name}:", flush=True)
        row = run_entry(name, episodes=a.episodes, progress=lambda m: print(f"    {m}", flush=True), **kw)
        row |= {"machine": where, "command": command_line()}
        append_row(row, a.table)
        print(
            f"  {row['metric']}: {row['result']:.4g} +- {row['ci95']:.2g} after {row['steps']} of "
            f"{row['paper_steps']} steps ({row['wall_s']} s); published {row['published']} ({row['source']})",
            flush=True,
        )
    print(f"\nwrote {relative(a.table)} and {relative(a.table.with_suffix('.md'))}")


if __name__ == "__main__":
    main()
