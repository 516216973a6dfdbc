"""Sinusoid K=10 regression: post-adaptation MSE of MAML, Reptile and lazy-maml after a short training run.

For each algorithm: train with `train_loop` from its config in configs/ for a time budget (the run
stops at the first log row past `--budget-s`, whose checkpoint is then evaluated), then meta-test on 600
held-out tasks and report the query MSE +- 95% CI after 1 and
10 inner steps (and after the config's own eval_inner_steps, e.g. 32 for Reptile), plus the whole
adaptation curve in the JSON.

  .venv/bin/python -m benchmarks.sinusoid --algorithms maml,reptile,lazy-maml --budget-s 240
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import RESULTS, ROOT, machine, markdown_table, print_machine, save, train_for
from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner

CONFIGS = {
    "maml": "configs/sinusoid-maml.yaml",
    "reptile": "configs/sinusoid-reptile.yaml",
    "lazy-maml": "configs/sinusoid-lazy-maml.yaml",
}
RUNS = RESULTS / "runs" / "sinusoid"


def config_for(algorithm: str, steps: int, log_every: int, extra: list[str] = ()):
    return as_config(
        str(ROOT / CONFIGS[algorithm]),
        [
            f"train.steps={steps}",
            f"train.log_every={log_every}",
            f"train.checkpoint_every={log_every}",
            "train.val_tasks=100",
            "train.device=cpu",
            f"output_dir={RUNS}",
            *extra,
        ],
    )


def run(
    algorithm: str,
    budget_s: float,
    max_steps: int,
    log_every: int,
    episodes: int,
    extra: list[str],
    from_run: str | None = None,
) -> dict:
    config = config_for(algorithm, max_steps, log_every, extra)
    if from_run:  # evaluate an earlier run's latest checkpoint (its training time is in its log, not here)
        from metaserve.api import load
        from metaserve.store.metrics import read_metrics

        model = load(ROOT / from_run)
        config = model.config
        run_dir, params, steps, train_s, metrics, status = (
            ROOT / from_run,
            model.params,
            model.step,
            None,
            read_metrics(ROOT / from_run),
            "evaluated from an earlier run: see its log for how training ended",
        )
    else:
        run_dir, params, steps, train_s, metrics, status = train_for(
            config, budget_s, progress=lambda m: print(f"    {algorithm} {m}", flush=True), with_status=True
        )
    learner = build_learner(config)
    dist = build_distribution(config)
    eval_steps = sorted({1, 10, config.algorithm.eval_inner_steps or config.algorithm.inner_steps})
    row = {
        "algorithm": algorithm,
        "train_steps": steps,
        "meta_batch": config.train.meta_batch,
        "inner_steps_train": config.algorithm.inner_steps,
        "inner_lr": config.algorithm.inner_lr,
        "outer": f"{config.algorithm.outer.optimizer} {config.algorithm.outer.lr}",
        "train_s": train_s,
        "episodes": episodes,
        "final_val_mse": float(metrics["val_loss"].iloc[-1]) if "val_loss" in metrics else None,
        "status": status,
    }
    t1 = time.perf_counter()
    curve = None
    for k in eval_steps:
        r = evaluate(learner, params, dist, episodes=episodes, steps=k)
        row[f"mse_{k}"] = r.mean
        row[f"ci95_{k}"] = r.ci95
        curve = r.curve  # the longest curve is kept (steps sorted)
    row["mse_0"] = curve[0]["loss"]
    row["eval_s"] = time.perf_counter() - t1
    row["curve"] = [round(c["loss"], 5) for c in curve]
    row["run_dir"] = str(run_dir.relative_to(ROOT))
    print(
        f"  {algorithm}: "
        + ", ".join(f"{k} steps {row[f'mse_{k}']:.4f} +- {row[f'ci95_{k}']:.4f}" for k in eval_steps)
        + f" ({steps} training steps; {status})",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="sinusoid K=10 post-adaptation MSE")
    p.add_argument("--algorithms", default="maml,reptile,lazy-maml")
    p.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        help="training seconds per algorithm (stops at the first log row past it)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=70000,
        help="train.steps (the MAML paper's 70k); the budget usually stops sooner",
    )
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md, 2 threads is slower here)"
    )
    p.add_argument("--set", action="append", default=[], help="extra config override for every algorithm")
    p.add_argument(
        "--from-run",
        action="append",
        default=[],
        metavar="ALG=RUN_DIR",
        help="evaluate this earlier run of ALG instead of training it (path relative to the project root)",
    )
    p.add_argument("--tag", default="sinusoid")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = machine()
    print_machine(info)
    from_run = dict(item.split("=", 1) for item in a.from_run)
    rows = [
        run(alg, a.budget_s, a.max_steps, a.log_every, a.episodes, a.set, from_run.get(alg))
        for alg in a.algorithms.split(",")
    ]
    print()
    cols = [
        "algorithm",
        "status",
        "train_steps",
        "meta_batch",
        "inner_steps_train",
        "train_s",
        "mse_0",
        "mse_1",
        "ci95_1",
        "mse_10",
        "ci95_10",
        "mse_32",
        "ci95_32",
        "mse_20",
        "ci95_20",
    ]
    print(markdown_table(rows, [c for c in cols if any(c in r for r in rows)]))
    csv_path, json_path = save(a.tag, rows, info)
    print(f"\nwrote {csv_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
