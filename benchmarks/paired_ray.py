"""Sinusoid MAML step time of every path, interleaved step by step and compared pairwise.

This machine flips between a fast and a slow state within seconds (the same single-process step
measures 16-17 ms or 25-30 ms), which is larger than the differences between paths. So every round
times one meta-step of each path back to back (well under a second apart), and a ratio is the median
over rounds of the ratio within a round. Paths keep their own parameters and optimizer state.

Paths (second-order MAML, mlp 40-40, meta-batch 32, k=5, float32, one torch thread per process):
  plain        benchmarks.plain_maml, the per-task loop users write today
  vec          metaserve `batch_update` (torch.func.vmap over tasks) + outer step, in this process
  ray1-calls   the learner's step (RayExecutor.compute + outer step), 1 worker, actor calls
  ray2-calls   the same with 2 workers
  ray1-graph   1 worker through a Ray compiled graph (runtime.transport=compiled-graph); timed in a
               second phase with plain and vec only, because an idle graph worker polls a core
The Ray paths time what `train_loop` records as `step_time` (executor round trip + outer step).

  .venv/bin/python -m benchmarks.paired_ray --rounds 150 --tag paired-sinusoid
"""

from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from benchmarks import plain_maml
from benchmarks.common import ROOT, machine, markdown_table, print_machine, save
from benchmarks.throughput import workload_config
from metaserve.api import as_config
from metaserve.config import Config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.ray_executor import RayExecutor

META_BATCH = 32


class VecPath:
    """metaserve's single-process vectorised step."""

    def __init__(self, config: Config):
        self.config, self.learner, self.dist = config, build_learner(config), build_distribution(config)
        self.params = self.learner.initial_params()
        self.state = self.learner.outer.init(self.params)

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        tasks = [
            self.dist.sample(self.config.seed, step, i, None, "train").to(self.learner.device, self.learner.dtype)
            for i in range(META_BATCH)
        ]
        update = self.learner.algorithm.batch_update(self.params, tasks)
        self.params, self.state = self.learner.outer_step(self.params, update.mean_contribution(), self.state)
        return {"step_time": time.perf_counter() - t0}


class RayPath(VecPath):
    """The learner's step on the Ray backend: executor round trip + outer step."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.executor = RayExecutor(config)

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        update, timing = self.executor.compute(self.params, step, range(META_BATCH))
        self.params, self.state = self.learner.outer_step(self.params, update.mean_contribution(), self.state)
        return {"step_time": time.perf_counter() - t0, "worker_time": timing["worker_time"]}


class PlainPath:
    """The textbook per-task loop (nn.Module + autograd.grad(create_graph=True))."""

    def __init__(self):
        torch.manual_seed(0)
        self.model, self.loss_fn, self.dist = plain_maml.build("sinusoid")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        tasks = [self.dist.sample(0, step, i) for i in range(META_BATCH)]
        plain_maml.meta_step(self.model, self.opt, tasks, self.loss_fn, 0.01, 5, False)
        return {"step_time": time.perf_counter() - t0}


def interleave(paths: dict, rounds: int, warmup: int, phase: str) -> list[dict]:
    """Two consecutive steps of every path per round, the second one timed (so a Ray worker's sampling
    ahead overlaps its learner's round trip exactly as in training), and a pause between paths (so it
    does not overlap the next path). Rows of (phase, round, path, timings)."""
    raw = []
    for rnd in range(warmup + rounds):
        for name, path in paths.items():
            path.step(2 * rnd)
            r = path.step(2 * rnd + 1)
            time.sleep(0.01)
            if rnd >= warmup:
                raw.append({"phase": phase, "round": rnd, "path": name, **r})
        if rnd >= warmup and (rnd - warmup) % 50 == 49:
            print(f"{phase}: {rnd - warmup + 1}/{rounds} rounds", flush=True)
    return raw


def summarise(raw: list[dict]) -> list[dict]:
    """Per path: median step time, and the median over rounds of within-round ratios (vec / path, plain / path)."""
    rows = []
    for phase in dict.fromkeys(r["phase"] for r in raw):
        mine = [r for r in raw if r["phase"] == phase]
        by = {(r["round"], r["path"]): r for r in mine}
        rounds = sorted({r["round"] for r in mine})
        for path in dict.fromkeys(r["path"] for r in mine):
            times = [by[(n, path)]["step_time"] for n in rounds]
            row = {
                "phase": phase,
                "path": path,
                "step_time_ms": 1e3 * statistics.median(times),
                "tasks_per_s": META_BATCH / statistics.median(times),
                "rounds": len(rounds),
            }
            for ref in ("vec", "plain"):
                if (rounds[0], ref) in by:
                    ratios = sorted(by[(n, ref)]["step_time"] / by[(n, path)]["step_time"] for n in rounds)
                    q = statistics.quantiles(ratios, n=4)
                    row[f"vs_{ref}"], row[f"vs_{ref}_iqr"] = statistics.median(ratios), f"{q[0]:.3f}-{q[2]:.3f}"
            if "worker_time" in by[(rounds[0], path)]:
                row["worker_time_ms"] = 1e3 * statistics.median(by[(n, path)]["worker_time"] for n in rounds)
                row["learner_comm_share"] = statistics.median(
                    1 - by[(n, path)]["worker_time"] / by[(n, path)]["step_time"] for n in rounds
                )
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tag", default="paired-sinusoid")
    a = p.parse_args()
    torch.set_num_threads(1)
    info = machine()
    print_machine(info)
    base = workload_config("sinusoid", META_BATCH, 10, 10**6, ["runtime.backend=ray"])
    ray.init(address="local", num_cpus=3, include_dashboard=False)  # logical CPUs for 3 one-thread workers
    calls = {
        "plain": PlainPath(),
        "vec": VecPath(base),
        "ray1-calls": RayPath(as_config(base, ["runtime.num_workers=1", "runtime.transport=calls"])),
        "ray2-calls": RayPath(as_config(base, ["runtime.num_workers=2", "runtime.transport=calls"])),
    }
    try:
        raw = interleave(calls, a.rounds, a.warmup, "calls")
    finally:
        for path in calls.values():
            if isinstance(path, RayPath):
                path.executor.close()
    graph = {
        "plain": PlainPath(),
        "vec": VecPath(base),
        "ray1-graph": RayPath(as_config(base, ["runtime.num_workers=1", "runtime.transport=compiled-graph"])),
    }
    try:
        raw += interleave(graph, a.rounds, a.warmup, "graph")
    finally:
        graph["ray1-graph"].executor.close()
    rows = summarise(raw)
    print()
    print(
        markdown_table(
            rows,
            [
                "phase",
                "path",
                "step_time_ms",
                "worker_time_ms",
                "learner_comm_share",
                "tasks_per_s",
                "vs_vec",
                "vs_vec_iqr",
                "vs_plain",
                "vs_plain_iqr",
                "rounds",
            ],
        )
    )
    csv_path, json_path = save(a.tag, rows, info, {"raw": raw, "command": vars(a)})
    print(f"\nwrote {csv_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
