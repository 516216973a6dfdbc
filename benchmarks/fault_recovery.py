"""How long a meta-step takes when adaptation workers die in it: none, one, or both of two workers.

Workers are killed mid-step with `ray.kill(..., no_restart=False)` (Ray restarts them, as after a
crash), from a timer thread while the learner waits for the step. Reports the median step time of
each case and the time Ray needs to restart a worker, over `--repeats` tries.

    python -m benchmarks.fault_recovery --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import ray
import torch

from metaserve.api import as_config
from metaserve.experiment import build_learner
from metaserve.runtime.ray_executor import RayExecutor

CONFIG = {
    "name": "faults",
    "task": {"name": "sinusoid"},
    "model": {"name": "mlp"},
    "algorithm": {"name": "maml", "inner_steps": 5},
    "train": {"meta_batch": 64, "dtype": "float32", "device": "cpu"},
    "runtime": {"backend": "ray", "num_workers": 2, "cpus_per_worker": 1, "worker_wait_s": 60},
}


def timed_step(executor: RayExecutor, params, step: int, kill: list[int], after_s: float) -> float:
    """Seconds of one meta-step, killing workers `kill` `after_s` into it."""
    timer = threading.Timer(after_s, lambda: [ray.kill(executor.workers[w], no_restart=False) for w in kill])
    start = time.perf_counter()
    timer.start()
    executor.compute(params, step, range(CONFIG["train"]["meta_batch"]))
    elapsed = time.perf_counter() - start
    timer.join()
    return elapsed


def restart_time(executor: RayExecutor) -> float:
    """Seconds from killing a worker until it answers again."""
    start = time.perf_counter()
    ray.kill(executor.workers[0], no_restart=False)
    time.sleep(0.2)  # let Ray notice the death before asking
    executor.worker_info()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/fault-recovery.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    config = as_config(CONFIG)
    params = build_learner(config).initial_params()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(config)
    try:
        for step in range(3):  # warm up
            executor.compute(params, step, range(64))
        normal = [timed_step(executor, params, 10 + i, [], 0.0) for i in range(a.repeats)]
        after_s = 0.5 * statistics.median(normal)
        cases = {"no kill": normal, "one worker killed": [], "both workers killed": [], "restart": []}
        for i in range(a.repeats):
            cases["one worker killed"].append(timed_step(executor, params, 100 + i, [0], after_s))
            executor.worker_info()
            cases["both workers killed"].append(timed_step(executor, params, 200 + i, [0, 1], after_s))
            executor.worker_info()
            cases["restart"].append(restart_time(executor))
    finally:
        executor.close()
        ray.shutdown()
    summary = {k: {"median_s": statistics.median(v), "all_s": v} for k, v in cases.items()}
    for k, v in summary.items():
        print(f"{k:>22}: median {v['median_s']:.3f} s  ({', '.join(f'{x:.2f}' for x in v['all_s'])})")
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpus": __import__("os").cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(a.out).write_text(json.dumps({"machine": machine, "config": CONFIG, "cases": summary}, indent=2))


if __name__ == "__main__":
    main()
