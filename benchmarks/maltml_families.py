"""Sinusoid families, 5-task 5-shot (Q = 5): goal-task MSE after 0..s finetuning steps (the MALTML paper's
Fig. 2 protocol).

Every learner is trained with `train_loop` from configs/sinusoid-families-maltml.yaml with its
`algorithm` section (and `task.unit` / `task.oracle`) replaced, for the same number of outer steps and
meta-batch, then evaluated by `family_eval.evaluate_families` on the same 600 held-out family draws
(test stream), every learner finetuning with the same SGD step gamma (the oracle, which diverges at it, with a
smaller one):
  maltml    first-order maltml, m FOMAML meta-steps on each family's 5 tasks (meta-finetunes at test too)
  maml      second-order MAML on single tasks of the families (task.unit=task): ignores the families
  pretrain  joint training on single tasks, then finetuning
  oracle    pretrain with inputs (x, amplitude, phase)
Writes results/maltml-families.{csv,json} and the plot results/maltml-families.png.

  .venv/bin/python -m benchmarks.maltml_families --steps 1500 --meta-batch 10
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from benchmarks.common import RESULTS, ROOT, machine, markdown_table, print_machine, save
from metaserve.api import as_config
from metaserve.experiment import build_learner
from metaserve.family_eval import evaluate_families, family_task_config, split_of
from metaserve.runtime.loop import train_loop
from metaserve.tasks import make_distribution

RUNS = RESULTS / "runs" / "maltml-families"
BASE = ROOT / "configs" / "sinusoid-families-maltml.yaml"


def learners(a) -> dict[str, tuple[dict, dict]]:
    """name -> (algorithm section, task overrides)."""
    outer = {"optimizer": "adam", "lr": a.outer_lr}
    return {
        "maltml": (
            {
                "name": "maltml",
                "meta_learner": a.meta_learner,
                "task_lr": a.task_lr,
                "task_steps": 1,
                "meta_lr": a.meta_lr,
                "meta_steps": a.meta_steps,
                "finetune_lr": a.gamma,
                "finetune_steps": a.finetune_steps,
                "outer": outer,
            },
            {},
        ),
        "maml": (
            {
                "name": "maml",
                "inner_lr": a.gamma,
                "inner_steps": 1,
                "eval_inner_steps": a.finetune_steps,
                "outer": outer,
            },
            {"unit": "task"},
        ),
        "pretrain": (
            {"name": "pretrain", "inner_lr": a.gamma, "eval_inner_steps": a.finetune_steps, "outer": outer},
            {"unit": "task"},
        ),
        # The oracle's finetuning diverges at the others' gamma (its inputs include A and phi, up to 5 and pi):
        # it finetunes with its own, smaller step (it needs no finetuning at all).
        "oracle": (
            {"name": "pretrain", "inner_lr": a.oracle_gamma, "eval_inner_steps": a.finetune_steps, "outer": outer},
            {"unit": "task", "oracle": True},
        ),
    }


def run(name: str, algorithm: dict, task: dict, a) -> dict:
    data = yaml.safe_load(BASE.read_text())
    data["task"] |= task
    data |= {"name": f"families-{name}", "output_dir": str(RUNS), "algorithm": algorithm}
    config = as_config(
        data,
        [
            f"train.steps={a.steps}",
            f"train.meta_batch={a.meta_batch}",
            f"train.log_every={a.steps}",
            f"train.checkpoint_every={a.steps}",
            "train.val_tasks=0",
            "train.device=cpu",
            f"train.dtype={a.dtype}",
        ],
    )
    t0 = time.perf_counter()
    result = train_loop(config, final_eval=False)
    train_s = time.perf_counter() - t0
    learner = build_learner(config)
    families = make_distribution(family_task_config(config.task))
    t1 = time.perf_counter()
    r = evaluate_families(
        learner.algorithm,
        result.params,
        families,
        seed=config.seed,
        split=split_of(config.task),
        families=a.families,
        steps=a.finetune_steps,
        dtype=learner.dtype,
    )
    row = {
        "learner": name,
        "steps": a.steps,
        "meta_batch": a.meta_batch,
        "gamma": algorithm.get("finetune_lr", algorithm.get("inner_lr")),
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t1, 1),
        "families": r.families,
        **{f"mse_{c['finetune_step']}": c["mean"] for c in r.curve},
        **{f"ci95_{c['finetune_step']}": c["ci95"] for c in r.curve},
        "run_dir": str(result.run_dir.relative_to(ROOT)),
    }
    print(f"  {name}: {r}  (train {train_s:.0f} s)", flush=True)
    return row


def plot(rows: list[dict], steps: int, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = list(range(steps + 1))
    for r in rows:
        mean = [r[f"mse_{s}"] for s in xs]
        ci = [r[f"ci95_{s}"] for s in xs]
        ax.plot(xs, mean, marker="o", ms=3, label=r["learner"])
        ax.fill_between(xs, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("goal-task finetuning steps")
    ax.set_ylabel(f"goal-task MSE (mean +- 95% CI, {rows[0]['families']} families)")
    ax.set_title("Sinusoid families, 5-task 5-shot (Q = 5)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description="MALTML sinusoid families: goal-task MSE vs finetuning steps")
    p.add_argument("--learners", default="maltml,maml,pretrain,oracle")
    p.add_argument("--steps", type=int, default=1500, help="outer steps for every learner")
    p.add_argument("--meta-batch", type=int, default=10, help="families (maltml) or tasks (others) per outer step")
    p.add_argument("--meta-learner", default="fomaml", choices=["fomaml", "reptile"])
    p.add_argument("--task-lr", type=float, default=0.01, help="maltml alpha")
    p.add_argument("--meta-lr", type=float, default=0.03, help="maltml beta")
    p.add_argument("--meta-steps", type=int, default=5, help="maltml m")
    p.add_argument("--gamma", type=float, default=0.01, help="finetuning step of every learner (maml's inner_lr too)")
    p.add_argument("--oracle-gamma", type=float, default=0.001, help="the oracle's finetuning step")
    p.add_argument("--outer-lr", type=float, default=0.001)
    p.add_argument("--finetune-steps", type=int, default=10)
    p.add_argument("--families", type=int, default=600)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="maltml-families")
    p.add_argument("--update", action="store_true", help="replace only these learners' rows in the existing results")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = machine()
    print_machine(info)
    table = learners(a)
    rows = [run(name, *table[name], a) for name in a.learners.split(",")]
    if a.update:  # keep the other learners' rows (and their machine record) from the previous run
        previous = json.loads((RESULTS / f"{a.tag}.json").read_text())
        fresh = {r["learner"]: r for r in rows}
        rows = [fresh.pop(r["learner"], r) for r in previous["rows"]] + list(fresh.values())
        info = {**info, "previous_run": previous["machine"]}
    print()
    cols = (
        ["learner", "steps", "gamma", "train_s"]
        + [f"mse_{s}" for s in (0, 1, 5, a.finetune_steps)]
        + [f"ci95_{a.finetune_steps}"]
    )
    print(markdown_table(rows, cols, ".4g"))
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    png = RESULTS / f"{a.tag}.png"
    if plot(rows, a.finetune_steps, png):
        print(f"plot: {png.relative_to(ROOT)}")
    print(f"wrote {csv_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
