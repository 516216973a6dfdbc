"""`metaserve serve RUN_DIR [RUN_DIR...] [--address] [--host] [--port] [--replicas N] ...`: the few-shot service
(metaserve/serve/app.py); options are checked before Ray starts."""

from __future__ import annotations

import argparse
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve runs as an adapt-on-request HTTP service (Ray Serve)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to serve (model id = directory name)")
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--replicas", type=int, default=1, help="replicas of the service (default 1; the least when autoscaling)"
    )
    p.add_argument("--max-replicas", type=int, help="autoscale between --replicas and this many replicas")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0: CPU)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--max-steps", type=int, default=100, help="most adaptation steps a request may ask for")
    p.add_argument("--max-examples", type=int, default=1000, help="most support + query examples per request")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MiB")
    p.add_argument("--max-batch", type=int, default=32, help="requests batched into one call (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits to fill")
    p.add_argument(
        "--layout",
        choices=["shared", "per-run"],
        default="shared",
        help="shared: every run in each replica (default); per-run: a router plus one deployment per run",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.serve.schema import Limits

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port={args.port} must be in 1..65535")
    try:
        limits = Limits(
            max_steps=args.max_steps, max_examples=args.max_examples, max_body_bytes=int(args.max_body_mb * 1024 * 1024)
        )
    except Exception as err:  # pydantic's message names the field and the bound
        raise ValueError(f"a limit is out of range: {err.errors()[0]['loc'][0]} {err.errors()[0]['msg']}") from None
    from metaserve.serve.app import build

    app = build(
        args.runs,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        limits=limits,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        layout=args.layout,
        max_replicas=args.max_replicas,
    )  # checks runs and options, loads nothing
    import ray
    from ray import serve

    # Inside a Ray job (`metaserve submit -- metaserve serve ...`) RAY_ADDRESS names the job's cluster.
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="metaserve", route_prefix="/")
        print(f"serving {', '.join(args.runs)} at http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
