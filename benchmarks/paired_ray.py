"""Sinusoid MAML step time of every path, interleaved in short blocks and compared pairwise.

This machine flips between a fast and a slow state every few seconds (the same single-process step
measures 16-17 ms or 25-30 ms), which swamps differences of a few percent between paths timed one
after another. Here every round times a short block of each path back to back, and a ratio is the
median over rounds of the ratio within a round, so both sides of a ratio saw the same machine.

Paths (sinusoid, second-order MAML, mlp 40-40, meta-batch 32, k=5, float32, one torch thread):
  plain        benchmarks/plain_maml.py, the per-task loop users write today
  vec          metaserve `batch_update` (torch.func.vmap over tasks) + outer step, in this process
  ray1-calls   the learner's step (RayExecutor.compute + outer step) with 1 worker, actor calls
  ray1-graph   the same through a Ray compiled graph (runtime.transport=compiled-graph)
  ray2-calls   2 workers, actor calls
The Ray paths time exactly what `train_loop` times as `step_time` (executor round trip + outer step).

  .venv/bin/python benchmarks/paired_ray.py --rounds 12 --tag paired-sinusoid
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common
from _common import markdown_table, print_machine, save

import ray
import torch

from metaserve.api import as_config
from metaserve.experiment import build_learner
from metaserve.runtime.ray_executor import RayExecutor

import plain_maml
from throughput import time_metaserve_batch_update, workload_config

PATHS = ["plain", "vec", "ray1-calls", "ray1-graph", "ray2-calls"]


def ray_block(executor: RayExecutor, config, steps: int, warmup: int) -> dict:
    """Median learner step (round trip + outer step) and worker compute over `steps` steps."""
    learner = build_learner(config)
    algo = learner.algorithm
    params = learner.initial_params()
    state = algo.init_outer_state(params)
    totals, workers = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        update, timing = executor.compute(params, step, range(config.train.meta_batch))
        params, state = algo.outer_step(params, {k: v / update.count for k, v in update.contribution.items()}, state)
        if step >= warmup:
            totals.append(time.perf_counter() - t0)
            workers.append(timing["worker_time"])
    return {"step_time": statistics.median(totals), "worker_time": statistics.median(workers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--block", type=int, default=10, help="timed steps per path per round (plain: a third of it)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tag", default="paired-sinusoid")
    a = p.parse_args()
    torch.set_num_threads(1)
    info = _common.machine()
    print_machine(info)
    base = workload_config("sinusoid", 32, 10, 1000, ["runtime.backend=ray"])
    configs = {"ray1-calls": as_config(base, ["runtime.num_workers=1", "runtime.transport=calls"]),
               "ray1-graph": as_config(base, ["runtime.num_workers=1", "runtime.transport=compiled-graph"]),
               "ray2-calls": as_config(base, ["runtime.num_workers=2", "runtime.transport=calls"])}
    # Logical CPUs for 3 one-thread workers at once (only one group computes at any time).
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    one, two = RayExecutor(configs["ray1-calls"]), RayExecutor(configs["ray2-calls"])
    raw = []
    try:
        for rnd in range(a.rounds):
            for path in PATHS:
                if path == "plain":
                    r = plain_maml.time_plain("sinusoid", 32, 5, 0.01, False, max(2, a.block // 3), 1)
                elif path == "vec":
                    r = time_metaserve_batch_update(base, True, a.block, a.warmup)
                    r["step_time"] = r["step_time_median"]
                elif path == "ray2-calls":
                    r = ray_block(two, configs[path], a.block, a.warmup)
                else:
                    one.reconfigure(configs[path])  # builds (graph) or tears down (calls) the compiled graph
                    r = ray_block(one, configs[path], a.block, a.warmup)
                raw.append({"round": rnd, "path": path, "step_time": r["step_time"], "worker_time": r.get("worker_time")})
            print(f"round {rnd}: " + ", ".join(f"{x['path']} {1e3 * x['step_time']:.1f} ms" for x in raw if x["round"] == rnd), flush=True)
    finally:
        one.close()
        two.close()
    rows = summarise(raw)
    print()
    print(markdown_table(rows, ["path", "step_time_ms", "worker_time_ms", "learner_comm_share", "tasks_per_s", "vs_vec", "vs_plain", "rounds"]))
    csv_path, json_path = save(a.tag, rows, info, {"raw": raw, "command": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


def summarise(raw: list[dict]) -> list[dict]:
    """Per path: median step time, and the median over rounds of its within-round speed ratio to vec and plain."""
    by = {(r["round"], r["path"]): r for r in raw}
    rounds = sorted({r["round"] for r in raw})
    rows = []
    for path in PATHS:
        times = [by[(n, path)]["step_time"] for n in rounds]
        row = {"path": path, "step_time_ms": 1e3 * statistics.median(times), "tasks_per_s": 32 / statistics.median(times),
               "vs_vec": statistics.median(by[(n, "vec")]["step_time"] / by[(n, path)]["step_time"] for n in rounds),
               "vs_plain": statistics.median(by[(n, "plain")]["step_time"] / by[(n, path)]["step_time"] for n in rounds),
               "rounds": len(rounds)}
        if by[(rounds[0], path)]["worker_time"] is not None:
            row["worker_time_ms"] = 1e3 * statistics.median(by[(n, path)]["worker_time"] for n in rounds)
            row["learner_comm_share"] = statistics.median(
                1 - by[(n, path)]["worker_time"] / by[(n, path)]["step_time"] for n in rounds)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
