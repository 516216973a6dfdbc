#!/usr/bin/env python
"""A local multi-node Ray cluster on this machine, for trying `metaserve submit` before a real one.

    python cluster/local_cluster.py start [--workers 2] [--cpus 1] [--dir /tmp/metaserve-cluster]
    python cluster/local_cluster.py status
    python cluster/local_cluster.py stop

`start` runs one head (`ray start --head`, dashboard and Jobs API on 127.0.0.1 only) and N worker
nodes, each a separate `ray start --block` process with its own ports, in its own session, logging
to `<dir>/<node>.log`; it records them in `<dir>/cluster.json`. `stop` ends exactly those processes
(`ray stop` would end every Ray on the machine, other users' included).

Security: token authentication stays on (Ray's default: the token is ~/.ray/auth_token, created on
first use). Ray replaces a loopback `--node-ip-address` with the machine's address and its internal
gRPC ports listen on all interfaces, protected by that token; only the dashboard/Jobs API is bound to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STATE_FILE = "cluster.json"
READY_LINE = "Ray runtime started"
LOOPBACK = "127.0.0.1"


def token_source() -> str:
    """Where the nodes read the cluster token, as Ray looks it up: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "token from RAY_AUTH_TOKEN"
    return f"token in {Path(os.environ.get('RAY_AUTH_TOKEN_PATH') or Path.home() / '.ray' / 'auth_token').expanduser()}"


def free_port() -> int:
    """A TCP port nothing listens on right now (on any interface, as Ray binds its gRPC ports)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    """Fail with a sentence when `port` is taken, before any node starts."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError as err:
            raise SystemExit(
                f"local_cluster: {what} port {port} is in use ({err.strerror}); pick another with --{what}-port"
            ) from None


def node_ports() -> list[str]:
    """Fresh ports for one node's services, so several nodes (and other Rays) share the machine."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    # 0/0: workers bind random free ports instead of sharing the default 10002-19999 range.
    return [a for k, v in ports.items() for a in (k, str(v))] + ["--min-worker-port", "0", "--max-worker-port", "0"]


def node_env() -> dict[str, str]:
    """The nodes' environment: this interpreter's bin first, so job entrypoints run `python` from it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Explicit, so worker nodes present the head's token too (unset, only a head turns token auth on).
    env.setdefault("RAY_AUTH_MODE", "token")
    return env


def launch(name: str, args: list[str], state_dir: Path) -> dict:
    """Start one `ray start --block` node in its own session; its log goes to <dir>/<name>.log."""
    log = state_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=node_env(), start_new_session=True
        )
    return {"name": name, "pid": proc.pid, "log": str(log)}


def wait_ready(node: dict, deadline: float) -> None:
    """Until the node's log says it started; fail with the log's tail if it exits or times out."""
    log = Path(node["log"])
    while time.monotonic() < deadline:
        if READY_LINE in log.read_text(errors="replace"):
            return
        if not alive(node["pid"]):
            break
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise SystemExit(f"local_cluster: node {node['name']} did not start (log {log}):\n{tail}")


def wait_dashboard(url: str, deadline: float) -> None:
    """Until the Jobs API answers (401 counts: it is up and asks for the token)."""
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"local_cluster: the dashboard at {url} did not answer in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child (when the caller is its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (Linux /proc; elsewhere: just the leader)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return [sid] if alive(sid) else []
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and alive(int(entry.name)):
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def job_processes(state_dir: Path) -> list[int]:
    """Live processes running in a job working directory of this cluster (job entrypoints, which Ray
    starts in sessions of their own, and their children)."""
    runtime = str(state_dir.resolve()) + os.sep
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(runtime) and f"{os.sep}runtime_resources{os.sep}" in cwd and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_nodes(nodes: list[dict], state_dir: Path, grace_s: float = 30.0) -> list[int]:
    """SIGTERM each node's `ray start --block` (its reaper then ends the node's process group), workers
    first; SIGKILL whatever is left of their sessions after `grace_s`, and any job entrypoint still
    running in the cluster's working directories. Returns the pids killed hard."""
    for node in reversed(nodes):
        try:
            os.kill(node["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(session_members(n["pid"]) for n in nodes):
        time.sleep(0.5)
    # Ray's watcher kills each job entrypoint within ~1 s of its supervisor's end; wait for that first.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and job_processes(state_dir):
        time.sleep(0.5)
    killed = []
    for pid in [p for n in nodes for p in session_members(n["pid"])] + job_processes(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def start(args: argparse.Namespace) -> dict:
    state_dir = Path(args.dir).resolve()
    state_file = state_dir / STATE_FILE
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if any(alive(n["pid"]) for n in old["nodes"]):
            raise SystemExit(
                f"local_cluster: a cluster from {state_dir} is running (dashboard {old['dashboard']}); "
                f"stop it first: python cluster/local_cluster.py stop --dir {state_dir}"
            )
    if args.workers < 0 or args.cpus < 1:
        raise SystemExit(f"local_cluster: need --workers >= 0 and --cpus >= 1, got {args.workers} and {args.cpus}")
    port = args.port or free_port()
    dashboard_port = args.dashboard_port or free_port()
    check_port_free(port, "gcs")
    check_port_free(dashboard_port, "dashboard")
    state_dir.mkdir(parents=True, exist_ok=True)
    temp_dir = state_dir / "ray"  # Ray's session files; keep the path short (unix socket names)
    dashboard = f"http://{LOOPBACK}:{dashboard_port}"
    store = ["--object-store-memory", str(args.object_store_mb * 1024 * 1024)]
    head = launch(
        "head",
        [
            "--head",
            "--node-ip-address",
            LOOPBACK,
            "--port",
            str(port),
            "--dashboard-host",
            LOOPBACK,
            "--dashboard-port",
            str(dashboard_port),
            "--ray-client-server-port",
            str(free_port()),
            "--num-cpus",
            str(args.cpus),
            "--temp-dir",
            str(temp_dir),
            *store,
            *node_ports(),
        ],
        state_dir,
    )
    nodes = [head]
    state = {"address": f"{LOOPBACK}:{port}", "dashboard": dashboard, "dir": str(state_dir), "nodes": nodes}
    try:
        deadline = time.monotonic() + args.timeout
        wait_ready(head, deadline)
        wait_dashboard(dashboard, deadline)
        for i in range(1, args.workers + 1):
            # Its own temp dir: nodes sharing one session dir would share one runtime_resources/ and
            # re-unpack a job's working_dir under the feet of the driver running in it.
            nodes.append(
                launch(
                    f"worker{i}",
                    [
                        "--address",
                        f"{LOOPBACK}:{port}",
                        "--node-ip-address",
                        LOOPBACK,
                        "--num-cpus",
                        str(args.cpus),
                        "--temp-dir",
                        str(state_dir / f"ray-w{i}"),
                        *store,
                        *node_ports(),
                    ],
                    state_dir,
                )
            )
        for node in nodes[1:]:
            wait_ready(node, deadline)
    except BaseException:
        stop_nodes(nodes, state_dir)
        raise
    state_file.write_text(json.dumps(state, indent=2))
    print(f"Ray cluster: head + {args.workers} worker node(s), {args.cpus} CPU(s) each; GCS {state['address']}")
    print(f"dashboard and Jobs API: {dashboard} (127.0.0.1 only; {token_source()})")
    print(f"submit:  metaserve submit --address {dashboard} -- metaserve train configs/sinusoid-maml-ray.yaml")
    print(f"stop:    python cluster/local_cluster.py stop --dir {state_dir}")
    return state


def stop(args: argparse.Namespace) -> None:
    state_dir = Path(args.dir).resolve()
    state_file = state_dir / STATE_FILE
    if not state_file.exists():
        raise SystemExit(f"local_cluster: no cluster recorded in {state_dir} (no {STATE_FILE}); nothing to stop")
    state = json.loads(state_file.read_text())
    killed = stop_nodes(state["nodes"], state_dir, args.grace)
    state_file.unlink()
    print(
        f"stopped the cluster of {state_dir} ({len(state['nodes'])} node(s)"
        + (f"; {len(killed)} process(es) needed SIGKILL)" if killed else ")")
    )


def status(args: argparse.Namespace) -> None:
    state_file = Path(args.dir).resolve() / STATE_FILE
    if not state_file.exists():
        raise SystemExit(f"local_cluster: no cluster recorded in {state_file.parent}")
    state = json.loads(state_file.read_text())
    print(f"dashboard {state['dashboard']}  GCS {state['address']}")
    for node in state["nodes"]:
        print(
            f"  {node['name']:<8} pid {node['pid']:<7} {'running' if alive(node['pid']) else 'gone'}  log {node['log']}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    default_dir = os.environ.get("METASERVE_CLUSTER_DIR", "/tmp/metaserve-cluster")
    p = sub.add_parser("start", help="start a head and N worker nodes")
    p.add_argument("--workers", type=int, default=2, help="worker nodes besides the head (default 2)")
    p.add_argument("--cpus", type=int, default=1, help="logical CPUs per node (default 1)")
    p.add_argument("--port", type=int, default=6379, help="GCS port (0: any free one; default 6379)")
    p.add_argument(
        "--dashboard-port", type=int, default=8265, help="dashboard/Jobs API port (0: any free; default 8265)"
    )
    p.add_argument("--object-store-mb", type=int, default=256, help="object store per node in MiB (default 256)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the nodes to come up")
    for q in (
        p,
        sub.add_parser("stop", help="stop the nodes this script started"),
        sub.add_parser("status", help="list the nodes"),
    ):
        q.add_argument("--dir", default=default_dir, help=f"state and log directory (default {default_dir})")
    sub.choices["stop"].add_argument("--grace", type=float, default=30, help="seconds before SIGKILL (default 30)")
    args = parser.parse_args(argv)
    {"start": start, "stop": stop, "status": status}[args.action](args)


if __name__ == "__main__":
    main()
