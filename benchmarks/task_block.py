"""What the fixed-order meta-batch sum costs: a local meta-step with `train.task_block` blocks against
one block holding the whole meta-batch (the order-free sum it replaced), paired step by step.

    python -m benchmarks.task_block --rounds 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.local import LocalExecutor

WORKLOADS = {
    "sinusoid maml k=5 mb=32": {
        "task": {"name": "sinusoid"},
        "model": {"name": "mlp"},
        "algorithm": {"name": "maml", "inner_steps": 5},
        "train": {"meta_batch": 32},
    },
    "omniglot fomaml 5w1s conv4-32 mb=8": {
        "task": {"name": "omniglot", "ways": 5, "shots": 1, "query": 15},
        "model": {"name": "conv4", "hidden": 32},
        "algorithm": {"name": "fomaml", "inner_steps": 1},
        "train": {"meta_batch": 8},
    },
}


def executor(spec: dict, block: int) -> tuple[LocalExecutor, dict]:
    config = as_config({**spec, "train": {**spec["train"], "task_block": block, "device": "cpu"}})
    learner = build_learner(config)
    return LocalExecutor(learner, build_distribution(config)), learner.initial_params()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/task-block.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = {}
    for name, spec in WORKLOADS.items():
        rounds = a.rounds if "sinusoid" in name else max(10, a.rounds // 10)
        blocked, params = executor(spec, a.block)
        whole, _ = executor(spec, spec["train"]["meta_batch"])
        ratios = []
        for step in range(rounds):  # alternate which runs first, so drifts in machine speed cancel
            times = {}
            for label, ex in (("blocked", blocked), ("whole", whole))[:: 1 if step % 2 else -1]:
                t = time.perf_counter()
                ex.compute(params, step, range(spec["train"]["meta_batch"]))
                times[label] = time.perf_counter() - t
            ratios.append(times["blocked"] / times["whole"])
        q = statistics.quantiles(ratios, n=4)
        out[name] = {"median_ratio": statistics.median(ratios), "iqr": [q[0], q[2]], "rounds": rounds}
        print(
            f"{name}: blocked/whole step time {out[name]['median_ratio']:.3f} "
            f"(IQR {q[0]:.3f}-{q[2]:.3f}, {rounds} rounds)"
        )
    Path(a.out).write_text(json.dumps({"block": a.block, "date": time.strftime("%Y-%m-%d"), "results": out}, indent=2))


if __name__ == "__main__":
    main()
