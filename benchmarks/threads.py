"""torch intra-op threads (1 vs the default = nproc) on the sinusoid MAML step, alternated in one process.

On a small shared CPU, OpenMP threads spin while other processes hold the cores; this measures what
that costs the plain loop, metaserve's vmap path and the local backend's default (no thread setting).

  .venv/bin/python benchmarks/threads.py --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics

import _common
from _common import markdown_table, print_machine, save

import torch

import plain_maml
from throughput import time_metaserve_batch_update, workload_config


def main() -> None:
    p = argparse.ArgumentParser(description="1 vs default torch threads, sinusoid MAML mb32 k=5")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    default = os.cpu_count() or 1
    info = _common.machine()
    print_machine(info)
    raw = {(path, n): [] for path in ("plain", "vec") for n in (1, default)}
    for _ in range(a.rounds):
        for n in (1, default):
            torch.set_num_threads(n)
            raw[("plain", n)].append(plain_maml.time_plain("sinusoid", 32, 5, 0.01, False, a.steps, 1)["step_time"])
            raw[("vec", n)].append(time_metaserve_batch_update(workload_config("sinusoid", 32, 1, 2), True, a.steps * 4, 2)["step_time"])
    rows = []
    for path in ("plain", "vec"):
        one, many = statistics.median(raw[(path, 1)]), statistics.median(raw[(path, default)])
        rows.append({"path": path, "ms_1_thread": 1e3 * one, f"ms_{default}_threads": 1e3 * many, "slowdown": many / one,
                     "raw_1": [round(1e3 * t, 1) for t in raw[(path, 1)]], f"raw_{default}": [round(1e3 * t, 1) for t in raw[(path, default)]]})
    print(markdown_table(rows))
    save("threads", rows, info)


if __name__ == "__main__":
    main()
