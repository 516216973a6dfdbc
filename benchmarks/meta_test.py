"""Meta-test speed: the whole adaptation curve vs the final metric only, and one process vs the Ray
adaptation workers (the same task-parallel path as training), on Omniglot MAML 5-way 1-shot.

    python -m benchmarks.meta_test --episodes 600 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ray
import torch

from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.local import LocalExecutor
from metaserve.runtime.ray_executor import RayExecutor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/meta-test.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    config = as_config(
        {
            "task": {"name": "omniglot", "ways": 5, "shots": 1, "query": 15},
            "model": {"name": "conv4", "hidden": a.hidden},
            "algorithm": {"name": "maml", "inner_lr": 0.4},
            "train": {"device": "cpu"},
            "runtime": {"backend": "ray", "num_workers": 2, "cpus_per_worker": 1},
        }
    )
    learner = build_learner(config)
    params, episodes = learner.initial_params(), range(a.episodes)
    local = LocalExecutor(learner, build_distribution(config))
    local.evaluate(params, range(4), a.steps)  # warm up (decode cache, first calls)
    times = {}
    for label, curve in (("one process, full curve", True), ("one process, final only", False)):
        t = time.perf_counter()
        local.evaluate(params, episodes, a.steps, curve)
        times[label] = time.perf_counter() - t
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(config)
    try:
        executor.evaluate(params, range(4), a.steps)
        for label, curve in (("2 Ray workers, full curve", True), ("2 Ray workers, final only", False)):
            t = time.perf_counter()
            executor.evaluate(params, episodes, a.steps, curve)
            times[label] = time.perf_counter() - t
    finally:
        executor.close()
        ray.shutdown()
    base = times["one process, full curve"]
    for label, s in times.items():
        print(f"{label:>28}: {s:7.1f} s  ({base / s:.2f}x one process, full curve)")
    Path(a.out).write_text(
        json.dumps(
            {
                "episodes": a.episodes,
                "steps": a.steps,
                "conv4_hidden": a.hidden,
                "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d"),
                "seconds": times,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
