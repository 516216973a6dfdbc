"""Meta-SGD and ANIL against MAML: sinusoid K=10 regression and a short Omniglot 5-way 1-shot run.

Every learner trains the same number of meta-steps from the same seed and config (only the algorithm
section differs), then meta-tests on held-out tasks: query MSE (sinusoid) or accuracy (Omniglot)
+- 95% CI after 1 and after `--eval-steps` inner steps. The numbers are a budget comparison, not a
reproduction: the papers train for tens of thousands of meta-steps (BENCHMARKS.md says how
this protocol differs).

  nice -n 10 .venv/bin/python -m benchmarks.meta_sgd_anil --sinusoid-steps 3000 --omniglot-steps 150
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import common as _common
from benchmarks.common import RESULTS, markdown_table, print_machine, save
from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.loop import train_loop

RUNS = RESULTS / "runs" / "meta_sgd_anil"
ADAM = {"optimizer": "adam", "lr": 1e-3}  # the outer step of every run here
SINUSOID_ALGORITHMS = {  # the MAML paper's sinusoid settings (alpha 0.01, one inner step); Meta-SGD's alpha init
    "maml": {"name": "maml", "inner_lr": 0.01},
    "anil": {"name": "anil", "inner_lr": 0.01},
    "meta-sgd": {"name": "meta-sgd", "init_lr": [0.005, 0.1]},
}
OMNIGLOT_ALGORITHMS = {  # the MAML paper's Omniglot alpha 0.4, one inner step
    "maml": {"name": "maml", "inner_lr": 0.4},
    "anil": {"name": "anil", "inner_lr": 0.4},
    "meta-sgd": {"name": "meta-sgd", "init_lr": 0.4},
}


def sinusoid_config(algorithm: dict, steps: int, eval_steps: int) -> dict:
    return {
        "name": f"bench-sinusoid-{algorithm['name']}",
        "seed": 0,
        "output_dir": str(RUNS),
        "task": {"name": "sinusoid", "shots": 10, "query": 10},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {**algorithm, "inner_steps": 1, "eval_inner_steps": eval_steps, "outer": ADAM},
        "train": {
            "steps": steps,
            "meta_batch": 25,
            "log_every": steps,
            "checkpoint_every": steps,
            "val_tasks": 100,
            "device": "cpu",
        },
        "eval": {"episodes": 2},
    }


def omniglot_config(algorithm: dict, steps: int, eval_steps: int, meta_batch: int, hidden: int) -> dict:
    return {
        "name": f"bench-omniglot-{algorithm['name']}",
        "seed": 0,
        "output_dir": str(RUNS),
        "task": {"name": "omniglot", "root": "../shared/data/omniglot", "ways": 5, "shots": 1, "query": 5},
        "model": {"name": "conv4", "hidden": hidden},
        "algorithm": {**algorithm, "inner_steps": 1, "eval_inner_steps": eval_steps, "outer": ADAM},
        "train": {
            "steps": steps,
            "meta_batch": meta_batch,
            "log_every": steps,
            "checkpoint_every": steps,
            "val_tasks": 20,
            "device": "cpu",
        },
        "eval": {"episodes": 2},
    }


def run(task: str, label: str, data: dict, episodes: int, eval_steps: int) -> dict:
    """Train `data` for its steps, then meta-test after 1 and `eval_steps` inner steps."""
    config = as_config(data)
    t0 = time.perf_counter()
    result = train_loop(config)
    train_s = time.perf_counter() - t0
    learner, dist = build_learner(config), build_distribution(config)
    row = {
        "task": task,
        "algorithm": label,
        "meta_steps": config.train.steps,
        "meta_batch": config.train.meta_batch,
        "train_s": round(train_s, 1),
        "episodes": episodes,
    }
    t1 = time.perf_counter()
    one = evaluate(learner, result.params, dist, episodes=episodes, steps=1)
    many = evaluate(learner, result.params, dist, episodes=episodes, steps=eval_steps)
    key = "acc" if one.metric == "acc" else "mse"
    row.update({f"{key}_1": one.mean, "ci95_1": one.ci95})
    row.update({f"{key}_{eval_steps}": many.mean, f"ci95_{eval_steps}": many.ci95})
    row["eval_s"] = round(time.perf_counter() - t1, 1)
    print(
        f"  {task} {label}: {key} after 1 step {one.mean:.4f} +- {one.ci95:.4f}, after {eval_steps} "
        f"{many.mean:.4f} +- {many.ci95:.4f} ({config.train.steps} meta-steps, {train_s:.0f} s)",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="Meta-SGD and ANIL vs MAML, same meta-steps")
    p.add_argument("--sinusoid-steps", type=int, default=3000)
    p.add_argument("--omniglot-steps", type=int, default=150)
    p.add_argument("--omniglot-meta-batch", type=int, default=8)
    p.add_argument("--omniglot-hidden", type=int, default=64)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--omniglot-episodes", type=int, default=200)
    p.add_argument("--only", default="sinusoid,omniglot")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    rows = []
    if "sinusoid" in a.only:
        for label, alg in SINUSOID_ALGORITHMS.items():
            rows.append(run("sinusoid K=10", label, sinusoid_config(alg, a.sinusoid_steps, 10), a.episodes, 10))
    if "omniglot" in a.only:
        for label, alg in OMNIGLOT_ALGORITHMS.items():
            data = omniglot_config(alg, a.omniglot_steps, 3, a.omniglot_meta_batch, a.omniglot_hidden)
            rows.append(run("omniglot 5w1s", label, data, a.omniglot_episodes, 3))
    print()
    cols = [
        "task",
        "algorithm",
        "meta_steps",
        "meta_batch",
        "train_s",
        "mse_1",
        "ci95_1",
        "mse_10",
        "ci95_10",
        "acc_1",
        "acc_3",
        "ci95_3",
        "episodes",
        "eval_s",
    ]
    print(markdown_table(rows, [c for c in cols if any(c in r for r in rows)]))
    csv_path, json_path = save("meta_sgd_anil", rows, info)
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
