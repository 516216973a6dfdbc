"""Reproduce the papers: train a configs/paper entry, meta-test it, append a row to the results table.

One row per run: method, benchmark, protocol, steps trained (and the paper's count), wall time, the
result +- 95% CI over the test episodes, and the published figure with its source (PUBLISHED below).
Rows are appended to benchmarks/results/reproduce.csv and the whole table is rewritten as
benchmarks/results/reproduce.md. Sinusoid entries report the query MSE after 1 and 10 SGD steps (and
after the config's own eval_inner_steps); Omniglot entries the accuracy after the config's test-time
adaptation, on 15 query images per class. Every Omniglot figure uses transductive batch norm (conv4
normalises with the statistics of the batch it is given).

  .venv/bin/python -m benchmarks.reproduce sinusoid-maml-k10                     # one entry, the paper's step count
  .venv/bin/python -m benchmarks.reproduce --cpu-set --budget-s 120              # sinusoid first, then minimal Omniglot
  .venv/bin/python -m benchmarks.reproduce omniglot-minimal-protonet-5w1s --max-steps 2000 --episodes 600

A cap (`--max-steps`, `--budget-s`) stops a run short of the paper's step count; the row says so.
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
    "paper_steps",
    "stopped_short",
    "wall_s",
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
) -> Config:
    """The entry's config, its steps capped at `max_steps`, checkpointed at every log row (so a budget stops
    cleanly)."""
    base = as_config(str(PAPER / f"{name}.yaml"))
    steps = min(base.train.steps, max_steps) if max_steps else base.train.steps
    every = log_every or min(base.train.log_every, max(1, steps // 10))
    return as_config(
        base,
        [
            f"train.steps={steps}",
            f"train.log_every={every}",
            f"train.checkpoint_every={every}",
            f"output_dir={output_dir}",
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
        "bn_mode": "transductive (batch statistics of each support/query set)",
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
    progress=None,
) -> dict[str, Any]:
    """Train entry `name` (capped), meta-test it, and return its table row (not yet written).

    The budget is checked at log rows, so `log_every` sets how far past `budget_s` a run may go.
    """
    check_names([name])
    paper_steps = as_config(str(PAPER / f"{name}.yaml")).train.steps
    config = paper_config(name, max_steps=max_steps, log_every=log_every, output_dir=output_dir, overrides=overrides)
    run_dir, _, steps, wall_s, metrics, status = train_for(
        config, budget_s or math.inf, progress=progress, with_status=True
    )
    model = metaserve.load(run_dir)  # the checkpoint the run ended on, through the public API
    row: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "entry": name,
        **describe(name, config),
        "steps": steps,
        "paper_steps": paper_steps,
        "stopped_short": steps < paper_steps,
        "wall_s": round(wall_s, 1),
        "episodes": episodes,
        "status": status,
        "run_dir": relative(run_dir),
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


def append_row(row: dict[str, Any], table: Path) -> None:
    """Append `row` to the CSV `table` (header written once) and rewrite the markdown table beside it."""
    table.parent.mkdir(parents=True, exist_ok=True)
    new = not table.exists()
    with table.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    shown = [
        "entry",
        "method",
        "benchmark",
        "protocol",
        "steps",
        "paper_steps",
        "wall_s",
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
    table.with_suffix(".md").write_text(markdown_table(rows, shown) + "\n")


def _cell(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="train and meta-test configs/paper entries, append to the results table")
    p.add_argument("names", nargs="*", help="configs/paper entries (file stems), e.g. sinusoid-maml-k10")
    p.add_argument("--cpu-set", action="store_true", help="every sinusoid entry, then every minimal Omniglot entry")
    p.add_argument("--max-steps", type=int, default=None, help="cap train.steps (default: the paper's count)")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per entry (stops at a log row)")
    p.add_argument("--episodes", type=int, default=600, help="meta-test episodes")
    p.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="steps between log rows and checkpoints, where the budget is checked (default: the config's)",
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
    ):
        if value is not None and value <= 0:
            p.error(f"{flag}={value} must be positive")
    try:
        check_names(names)
        for name in names:  # every config validated before the first run starts
            paper_config(name, max_steps=a.max_steps, log_every=a.log_every, overrides=a.set)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(a.threads)
    info = machine()
    where = f"{info['nproc']} CPU ({info['cpu']}), GPU {info['gpu']}"
    for name in names:
        print(f"{name}:", flush=True)
        row = run_entry(
            name,
            max_steps=a.max_steps,
            budget_s=a.budget_s,
            episodes=a.episodes,
            log_every=a.log_every,
            overrides=a.set,
            progress=lambda m: print(f"    {m}", flush=True),
        )
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
