"""Multi-node fault scenario, run in its own process by tests/test_ray_faults.py.

A driver connects to one Ray only, and the rest of the suite shares one embedded Ray, so this runs
apart (the test gives it a private RAY_TMPDIR). A `ray.cluster_utils.Cluster`: a CPU-less head (the
driver's node, never removed) and 3 one-CPU worker nodes, each with its own custom resource.

  (a) 3 workers under SPREAD land on the 3 worker nodes.
  (b) A 2-worker MAML run loses the node of worker 0 after its first log row: Ray reschedules that
      worker's placement-group bundle and the actor onto the spare node, and the run ends with the
      local backend's parameters.
  (c) The node of worker 1 goes too, and there is no spare: worker 1 cannot come back, its slices go
      to worker 0, and a meta-step still gives the fault-free update. With the last worker node gone,
      a meta-step raises WorkersUnavailable after about runtime.worker_wait_s.

Usage: python multinode.py [OUTPUT_DIR]. Prints one line `RESULT:<json>` that the test asserts on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

MB = 1024 * 1024
NODES = ("node_a", "node_b", "node_c")


def tiny(output_dir: str, **runtime) -> object:
    from metaserve.api import as_config

    return as_config(
        {
            "name": "multinode",
            "seed": 5,
            "output_dir": output_dir,
            "task": {"name": "sinusoid", "shots": 5, "query": 5},
            "model": {"name": "mlp", "hidden": [16, 16]},
            "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 2},
            "train": {
                "steps": 8,
                "meta_batch": 6,
                "log_every": 2,
                "checkpoint_every": 2,
                "val_tasks": 0,
                "dtype": "float64",
                "device": "cpu",
            },
            "eval": {"episodes": 10},
            "runtime": {"cpus_per_worker": 1, "worker_wait_s": 30, **runtime},
        }
    )


def close(a, b, rtol: float = 1e-10) -> bool:
    import torch

    return all(torch.allclose(a[k], b[k], rtol=rtol, atol=1e-12) for k in b)


def main(output_dir: str) -> dict:
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    from metaserve.experiment import build_distribution, build_learner
    from metaserve.runtime.local import LocalExecutor
    from metaserve.runtime.loop import train_loop
    from metaserve.runtime.ray_executor import RayExecutor, WorkersUnavailable

    out: dict = {"events": []}
    t0 = time.monotonic()
    mark = lambda what: out["events"].append([round(time.monotonic() - t0, 2), what])  # noqa: E731
    tmp = output_dir
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MB, "include_dashboard": False}
    )
    reset_ray_address()  # don't advertise this cluster to `ray.init()` calls elsewhere
    executor = None
    try:
        nodes = {}
        for name in NODES:
            node = cluster.add_node(num_cpus=1, object_store_memory=80 * MB, resources={name: 1})
            nodes[node.node_id] = (name, node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        mark("cluster up")
        names = lambda info: [nodes[w["node_id"]][0] if w["node_id"] in nodes else "head" for w in info]  # noqa: E731

        def remove(name: str) -> None:
            mark(f"removing {name}")
            cluster.remove_node(next(node for n, node in nodes.values() if n == name))
            mark(f"removed {name}")

        # (a) SPREAD: 3 workers on 3 different worker nodes, none on the head.
        executor = RayExecutor(tiny(tmp, backend="ray", num_workers=3, placement_strategy="SPREAD"))
        out["spread"] = names(executor.worker_info())
        executor.close()
        mark("spread checked")

        # (b) 2 workers on 3 nodes; the node of worker 0 is removed after the first log row.
        config = tiny(tmp, backend="ray", num_workers=2, placement_strategy="SPREAD")
        reference = train_loop(tiny(tmp, backend="local"), final_eval=False).params
        executor = RayExecutor(config)
        out["before"] = names(executor.worker_info())
        sends = [0]  # how many slice calls went out (a re-sent slice counts again)
        send = executor._send

        def counting_send(*args, **kwargs):
            sends[0] += 1
            return send(*args, **kwargs)

        executor._send = counting_send

        def on_log(row, ckpt):
            if "removed_at_step" not in out:
                out["removed_at_step"] = row["step"]
                remove(out["before"][0])

        got = train_loop(config, final_eval=False, executor=executor, on_log=on_log).params
        mark("run with a lost node done")
        out["sends_in_run"], sends[0] = sends[0], 0
        out["after"] = names(executor.worker_info())
        out["run_matches_local"] = close(got, reference)
        out["run_max_abs_diff"] = max(float((got[k] - reference[k]).abs().max()) for k in reference)

        # (c) No spare node: worker 1's node goes; its slice is re-sent to worker 0.
        learner = build_learner(config)
        local = LocalExecutor(learner, build_distribution(config))
        params = learner.initial_params()
        remove(out["after"][1])
        expected, _ = local.compute(params, 3, range(6))
        start = time.monotonic()
        update, _ = executor.compute(params, 3, range(6))
        out["no_spare_step_s"] = round(time.monotonic() - start, 2)
        out["sends_without_spare"], sends[0] = sends[0], 0
        out["no_spare_matches_local"] = close(update.contribution, expected.contribution) and update.count == 6
        # The next step goes straight to the live worker: both slices, no call to the lost one.
        expected, _ = local.compute(params, 4, range(6))
        update, _ = executor.compute(params, 4, range(6))
        out["sends_next_step"], sends[0] = sends[0], 0
        out["next_step_matches_local"] = close(update.contribution, expected.contribution) and update.count == 6
        mark("step without a spare done")

        # ... and with no worker node left, WorkersUnavailable after about worker_wait_s.
        executor.wait_s = 4.0
        remove(out["after"][0])
        start = time.monotonic()
        try:
            executor.compute(params, 5, range(6))
            out["unavailable"] = None
        except WorkersUnavailable as err:
            out["unavailable"] = str(err)
        out["unavailable_after_s"] = round(time.monotonic() - start, 2)
        mark("no workers checked")
        out["ok"] = True
    except Exception as err:  # report instead of hanging: the test shows this
        import traceback

        out["ok"] = False
        out["error"] = f"{type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc()
    finally:
        mark("shutting down")
        if executor is not None:
            executor.close()
        ray.shutdown()
        cluster.shutdown()
        out["seconds"] = round(time.monotonic() - t0, 2)
    return out


if __name__ == "__main__":
    print(
        "RESULT:"
        + json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="metaserve-multinode-"))),
        flush=True,
    )
    os._exit(0)  # don't wait on Ray's exit hooks: every node is already down
