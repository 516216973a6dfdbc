"""Why metaserve's per-task loop is slower than the plain PyTorch loop: the two alternated step by step
(so machine load hits both alike), then one step of each under torch.profiler (top operators).

  .venv/bin/python benchmarks/diagnose_loop.py --task omniglot --rounds 6
"""
from __future__ import annotations

import argparse
import statistics
import time

import _common
from _common import print_machine, save

import torch
from torch.profiler import ProfilerActivity, profile


import plain_maml
from throughput import workload_config
from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner


def main() -> None:
    p = argparse.ArgumentParser(description="per-task loop: metaserve vs plain, interleaved, plus profiles")
    p.add_argument("--task", choices=["sinusoid", "omniglot"], default="omniglot")
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    torch.set_num_threads(1)
    info = _common.machine()
    print_machine(info)
    mb = a.meta_batch
    config = as_config(workload_config(a.task, mb, 1, 2), ["train.vectorize='off'"])
    learner = build_learner(config)
    dist = build_distribution(config)
    algo = learner.algorithm
    params = learner.initial_params()
    state = algo.init_outer_state(params)
    first_order = a.task == "omniglot"
    lr = 0.4 if first_order else 0.01
    model, loss_fn, _ = plain_maml.build(a.task, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def ms_step(step):
        nonlocal params, state
        tasks = [dist.sample(config.seed, step, i, None, "train") for i in range(mb)]
        u = algo.batch_update(params, tasks)
        params, state = algo.outer_step(params, u.mean_contribution(), state)

    def plain_step(step):
        tasks = [dist.sample(config.seed, step, i, None, "train") for i in range(mb)]
        plain_maml.meta_step(model, opt, tasks, loss_fn, lr, 5, first_order)

    ms_step(0), plain_step(0)  # warm-up
    t_ms, t_plain = [], []
    for r in range(1, a.rounds + 1):
        t0 = time.perf_counter(); ms_step(r); t1 = time.perf_counter(); plain_step(r); t2 = time.perf_counter()
        t_ms.append(t1 - t0), t_plain.append(t2 - t1)
    print(f"interleaved {a.rounds} rounds, {a.task} mb{mb} k=5: metaserve loop median {1e3 * statistics.median(t_ms):.0f} ms, "
          f"plain median {1e3 * statistics.median(t_plain):.0f} ms, ratio {statistics.median(t_ms) / statistics.median(t_plain):.2f}")
    tables = {}
    for name, fn in (("metaserve_loop", ms_step), ("plain", plain_step)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(99)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top)
        tables[name] = table
        print(f"\n--- {name}: top operators by self CPU time ---\n{table}")
    rows = [{"task": a.task, "meta_batch": mb, "metaserve_loop_ms": 1e3 * statistics.median(t_ms), "plain_ms": 1e3 * statistics.median(t_plain),
             "ratio": statistics.median(t_ms) / statistics.median(t_plain)}]
    save(f"diagnose-loop-{a.task}", rows, info, {"raw_ms": {"metaserve": t_ms, "plain": t_plain}, "profiles": tables})


if __name__ == "__main__":
    main()
