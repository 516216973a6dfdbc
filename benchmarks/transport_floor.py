"""What one meta-step's round trip costs on this machine with no learner at all: Ray's floor.

A stand-in worker computes torch matmuls for a fixed time (what a sinusoid meta-step's slice takes)
and returns a buffer the size of the sinusoid MLP's gradient; the driver sends it the same payload
metaserve sends and does nothing else. Its "learner + communication" share (1 - compute / step) is
the least any learner can reach through that transport here, so it puts metaserve's share in context.

Transports: an actor call answered as a streaming generator (what `runtime.transport=calls` does),
a plain actor call, and a Ray compiled graph (`runtime.transport=compiled-graph`). Each is also timed
back to back (0 ms of compute), which shows the part that is wake-up latency rather than message cost.

  .venv/bin/python -m benchmarks.transport_floor --steps 200 --tag transport-floor
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import ray
import torch
from ray.dag import InputNode, MultiOutputNode

from benchmarks.common import ROOT, machine, markdown_table, print_machine, save

PARAMS = 1761  # the sinusoid MLP 1-40-40-1


class BusyWorker:
    """Computes for `seconds` and answers with a gradient-sized buffer, summed metrics, count, compute time."""

    def __init__(self):
        torch.set_num_threads(1)
        self.a = torch.randn(64, 64)

    def _work(self, flat: np.ndarray, seconds: float) -> tuple:
        start = time.perf_counter()
        x = self.a
        while time.perf_counter() - start < seconds:
            x = torch.tanh(x @ self.a)
        return flat.copy(), {"loss": 1.0, "loss_pre": 2.0}, 32, time.perf_counter() - start

    def call(self, flat, step, indices, seconds):
        return self._work(flat, seconds)

    def stream(self, flat, step, indices, seconds):
        yield self._work(flat, seconds)

    def graph_step(self, payload):
        flat, step, slices, seconds = payload
        return self._work(flat, seconds)


def time_transport(worker, graph, transport: str, seconds: float, steps: int) -> list[dict]:
    flat = np.zeros(PARAMS, np.float32)
    rows = []
    for step in range(steps + 10):
        t0 = time.perf_counter()
        if transport == "graph":
            result = ray.get(graph.execute((flat, step, [list(range(32))], seconds)))[0]
        elif transport == "calls-streaming":
            result = ray.get(
                next(worker.stream.options(num_returns="streaming").remote(flat, step, list(range(32)), seconds))
            )
        else:
            result = ray.get(worker.call.remote(flat, step, list(range(32)), seconds))
        total = time.perf_counter() - t0
        if step >= 10:
            rows.append({"step_time": total, "worker_time": result[3]})
    return rows


def summarise(transport: str, seconds: float, rows: list[dict]) -> dict:
    step = statistics.median(r["step_time"] for r in rows)
    return {
        "transport": transport,
        "compute_ms": 1e3 * seconds,
        "step_time_ms": 1e3 * step,
        "round_trip_ms": 1e3 * statistics.median(r["step_time"] - r["worker_time"] for r in rows),
        "learner_comm_share": statistics.median(1 - r["worker_time"] / r["step_time"] for r in rows)
        if seconds
        else 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--compute-ms", type=float, nargs="+", default=[0.0, 20.0])
    p.add_argument("--tag", default="transport-floor")
    a = p.parse_args()
    torch.set_num_threads(1)
    info = machine()
    print_machine(info)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    worker = ray.remote(num_cpus=1)(BusyWorker).remote()
    rows = []
    for transport in ("calls-streaming", "calls-plain"):
        for ms in a.compute_ms:
            rows.append(summarise(transport, ms / 1e3, time_transport(worker, None, transport, ms / 1e3, a.steps)))
    with InputNode() as payload:
        graph = MultiOutputNode([worker.graph_step.bind(payload)]).experimental_compile()
    try:
        for ms in a.compute_ms:
            rows.append(summarise("graph", ms / 1e3, time_transport(worker, graph, "graph", ms / 1e3, a.steps)))
    finally:
        graph.teardown()
    print()
    print(markdown_table(rows, ["transport", "compute_ms", "step_time_ms", "round_trip_ms", "learner_comm_share"]))
    csv_path, json_path = save(a.tag, rows, info, {"command": vars(a)})
    print(f"\nwrote {csv_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
