"""Bounded loopback load on `metaserve serve`: requests/s and p50/p99 latency at 1, 8, 32, 128
concurrent clients, batching on and off, against the naive in-process baseline (one process, one
request at a time through `metaserve.load(run).adapt(x, y).predict(q)`).

    nice -n 10 python -m benchmarks.serve_load --seconds 8 --out benchmarks/results/serve_load.json

Each level sends requests from C client threads (keep-alive HTTP/1.1 on 127.0.0.1) for `--seconds`
or `--requests`, whichever comes first. The models are trained for a few steps only: throughput does
not depend on the weights. Every served answer is checked against the in-process API (rtol 1e-4).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import metaserve
from metaserve.api import as_config
from metaserve.runtime.loop import train_loop

WORKLOADS = {
    "sinusoid-mlp": {
        "task": {"name": "sinusoid", "shots": 10, "query": 10},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1, "eval_inner_steps": 10},
    },
}


def conv4_workload(root: Path) -> dict:
    """conv4 (64 channels, 28 px) 5-way 1-shot fomaml on a synthetic image folder of 5 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(5):
        (root / "images" / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "images" / f"c{c}" / f"{i}.png")
    split = {"sources": ["images"]}
    return {
        "task": {
            "name": "image-folder",
            "root": str(root),
            "ways": 5,
            "shots": 1,
            "query": 2,
            "image_size": 28,
            "cache_dir": str(root / "cache"),
            "train": split,
            "test": split,
        },
        "model": {"name": "conv4", "hidden": 64},
        "algorithm": {"name": "fomaml", "inner_lr": 0.4, "eval_inner_steps": 1},
    }


def train_run(name: str, spec: dict, out: Path) -> Path:
    train = {"steps": 2, "meta_batch": 2, "log_every": 2, "checkpoint_every": 2, "val_tasks": 2, "device": "cpu"}
    return Path(
        train_loop(
            as_config({"name": name, "output_dir": str(out), **spec, "train": train, "eval": {"episodes": 2}})
        ).run_dir
    )


def make_requests(kind: str, n: int, seed: int) -> list[dict]:
    """n distinct few-shot tasks as request bodies (sinusoid: 10 shots, 10 queries; images: 5-way 1-shot,
    10 queries)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "sinusoid-mlp":
            amp, phase = rng.uniform(0.1, 5), rng.uniform(0, np.pi)
            x = rng.uniform(-5, 5, (20, 1)).round(4)
            out.append(
                {
                    "support_x": x[:10].tolist(),
                    "support_y": (amp * np.sin(x[:10] - phase)).round(4).tolist(),
                    "query_x": x[10:].tolist(),
                }
            )
        else:
            out.append(
                {
                    "support_x": rng.uniform(0, 1, (5, 1, 28, 28)).round(3).tolist(),
                    "support_y": list(range(5)),
                    "query_x": rng.uniform(0, 1, (10, 1, 28, 28)).round(3).tolist(),
                }
            )
    return out


def tensors(req: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = req["support_y"]
    sy = torch.tensor(y, dtype=dtype) if isinstance(y[0], list) else torch.tensor(y)
    return torch.tensor(req["support_x"], dtype=dtype), sy, torch.tensor(req["query_x"], dtype=dtype)


def naive(run: Path, requests: list[dict], seconds: float) -> dict:
    """One process, one request at a time through the in-process API (from the JSON-like lists)."""
    model = metaserve.load(run)
    lat, t0 = [], time.perf_counter()
    for req in requests:
        s = time.perf_counter()
        sx, sy, qx = tensors(req, model.learner.dtype)
        model.adapt(sx, sy).predict(qx)
        lat.append(time.perf_counter() - s)
        if time.perf_counter() - t0 > seconds:
            break
    return summary(lat, time.perf_counter() - t0)


def summary(lat: list[float], wall: float, errors: int = 0) -> dict:
    ms = sorted(x * 1e3 for x in lat)
    return {
        "requests": len(ms),
        "errors": errors,
        "req_per_s": round(len(ms) / wall, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }


def load(
    port: int, requests: list[dict], clients: int, seconds: float, total: int, retries: int = 0
) -> tuple[dict, list]:
    """C threads, each on its own keep-alive connection, until `total` requests or `seconds` pass;
    a 5xx or a dropped connection is retried up to `retries` times before it counts as an error."""
    bodies = [json.dumps(r).encode() for r in requests]
    lat: list[float] = []
    answers: list[tuple[int, dict]] = []
    errors, retried = [0], [0]
    lock, counter = threading.Lock(), [0]
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= total:
                break
            s = time.perf_counter()
            for attempt in range(retries + 1):
                try:
                    conn.request(
                        "POST", "/predict", body=bodies[i % len(bodies)], headers={"Content-Type": "application/json"}
                    )
                    resp = conn.getresponse()
                    status, data = resp.status, resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    status, data = 599, b""
                if status < 500:
                    break
                with lock:
                    retried[0] += attempt < retries
            with lock:
                if status == 200:
                    lat.append(time.perf_counter() - s)
                    if len(answers) < 64:
                        answers.append((i % len(bodies), json.loads(data)))
                else:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = summary(lat, time.perf_counter() - t0, errors[0])
    return {**row, "retried": retried[0]} if retries else row, answers


def check(run: Path, requests: list[dict], answers: list) -> float:
    """Largest relative difference between served answers and the in-process API's."""
    model, worst = metaserve.load(run), 0.0
    for i, got in answers:
        sx, sy, qx = tensors(requests[i], model.learner.dtype)
        want = model.adapt(sx, sy).predict(qx)
        out = torch.tensor(got["logits"] if "logits" in got else got["predictions"], dtype=want.dtype)
        want = want if "logits" in got else want[:, 0]
        worst = max(worst, float(((out - want).abs() / (want.abs() + 1e-3)).max()))
    return worst


def compare_layouts(port: int, tmp: Path, args: argparse.Namespace) -> dict:
    """Two runs served by one deployment (shared) or by a router plus one deployment each (per-run)."""
    from ray import serve

    from metaserve.serve.app import build

    runs = [train_run(f"sinusoid-{i}", WORKLOADS["sinusoid-mlp"], tmp / f"layout-{i}") for i in range(2)]
    requests = [{**r, "model": runs[i % 2].name} for i, r in enumerate(make_requests("sinusoid-mlp", 256, seed=2))]
    rows = {}
    for layout in ("shared", "per-run"):
        serve.run(build([str(r) for r in runs], max_batch=32, layout=layout), name="bench", route_prefix="/")
        load(port, requests, 4, 2.0, 200)
        for c in args.clients:
            rows[f"{layout}, 2 runs, {c} clients"], answers = load(port, requests, c, args.seconds, args.requests)
            print(layout, c, rows[f"{layout}, 2 runs, {c} clients"], flush=True)
            for i, got in answers:
                assert got["model"] == requests[i]["model"]
        serve.delete("bench")
    return rows


def fault_check(port: int, tmp: Path, args: argparse.Namespace) -> dict:
    """Two replicas under 16 clients; one replica is killed 3 s in. Requests are retried once on a 5xx:
    counts errors and retries, checks every sampled answer, and that Serve brings the replica back."""
    import ray
    from ray import serve

    from metaserve.serve.app import build

    run = train_run("sinusoid-fault", WORKLOADS["sinusoid-mlp"], tmp / "fault")
    requests = make_requests("sinusoid-mlp", 256, seed=3)
    serve.run(build([str(run)], replicas=2, max_batch=32), name="bench", route_prefix="/")
    load(port, requests, 4, 2.0, 200)
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "FewShotService" in a["name"]]

    def kill() -> None:
        time.sleep(3.0)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)

    killer = threading.Thread(target=kill)
    killer.start()
    row, answers = load(port, requests, 16, 12.0, 100000, retries=1)
    killer.join()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 60:
        status = serve.status().applications["bench"].deployments["FewShotService"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(0.5)
    row["recovered_s"] = round(time.perf_counter() - t0, 1)
    row["max_rel_diff"] = check(run, requests, answers)
    after, _ = load(port, requests, 8, 3.0, 100000)
    row["after_recovery"] = after
    serve.delete("bench")
    print("fault", row, flush=True)
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="time bound of each load level")
    p.add_argument("--requests", type=int, default=4000, help="request bound of each load level")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--workloads", nargs="+", default=["sinusoid-mlp"], choices=["sinusoid-mlp", "conv4-5w1s"])
    p.add_argument("--replicas", type=int, nargs="+", default=[1])
    p.add_argument("--batch", type=int, nargs="+", default=[32, 1], help="max batch sizes to run (1: batching off)")
    p.add_argument(
        "--layouts",
        action="store_true",
        help="instead: two sinusoid runs served shared vs per-run, requests alternating between them",
    )
    p.add_argument("--fault", action="store_true", help="instead: kill one of two replicas under load")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    # Ray runs its workers (the Serve proxy and replicas) at niceness 19 on this VM; the naive baseline
    # and the load generator run at the same niceness, so the ratios compare like with like.
    os.nice(max(0, 19 - os.nice(0)))
    import ray
    from ray import serve

    from metaserve.serve.app import build

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    result = {
        "command": "python -m benchmarks.serve_load " + " ".join(__import__("sys").argv[1:]),
        "machine": f"{platform.node()} ({torch.get_num_threads()} torch thread, {os.cpu_count()} cores)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workloads": {},
    }
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if args.layouts:
            result["layouts"] = compare_layouts(port, tmp, args)
        if args.fault:
            result["fault"] = fault_check(port, tmp, args)
        for name in [] if args.layouts or args.fault else args.workloads:
            spec = WORKLOADS[name] if name in WORKLOADS else conv4_workload(tmp / "images")
            run = train_run(name, spec, tmp / name)
            requests = make_requests(name, 256, seed=1)
            rows = {"naive in-process": naive(run, requests * 8, args.seconds)}
            print(name, "naive", rows["naive in-process"], flush=True)
            for replicas in args.replicas:
                for batch in args.batch:
                    serve.run(
                        build([str(run)], replicas=replicas, max_batch=batch, batch_wait_ms=2.0),
                        name="bench",
                        route_prefix="/",
                    )
                    load(port, requests, 4, 2.0, 200)  # warm-up
                    worst = 0.0
                    for c in args.clients:
                        row, answers = load(port, requests, c, args.seconds, args.requests)
                        worst = max(worst, check(run, requests, answers))
                        mode = f"on (max {batch})" if batch > 1 else "off"
                        key = f"serve {replicas} replica(s), batching {mode}, {c} clients"
                        rows[key] = row
                        print(name, key, row, flush=True)
                    rows[f"max rel. diff vs in-process, {replicas} replica(s), batch {batch}"] = worst
                    serve.delete("bench")
            result["workloads"][name] = rows
    finally:
        serve.shutdown()
        ray.shutdown()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
