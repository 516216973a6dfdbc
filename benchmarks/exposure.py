"""One-off measurement: what listens, where, and what answers without the token, for the documented
local cluster (`cluster/local_cluster.py start`); then what an embedded Ray leaves behind when its
driver is SIGKILLed (the driver alone, not its process group).

    .venv/bin/python -m benchmarks.exposure            # ~1-2 min; starts one Ray at a time, stops it

Prints a table of listening TCP sockets (address, port, process, unauthenticated HTTP answer) and
the embedded instance's surviving processes at intervals after the kill.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _procs() -> dict[int, int]:
    """pid -> parent pid, from /proc (psutil is not a dependency)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree(pids: list[int]) -> set[int]:
    """`pids` and all their descendants alive now."""
    parents, out, todo = _procs(), set(), [p for p in pids]
    while todo:
        pid = todo.pop()
        if pid in parents and pid not in out:
            out.add(pid)
            todo += [c for c, pp in parents.items() if pp == pid]
    return out


def cmd(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(Path(x.decode()).name if i == 0 else x.decode() for i, x in enumerate(parts[:3]))


def proc_name(pid: int) -> str:
    """The process name (comm: gcs_server, raylet, ray::DashboardAgent, ...)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    return cmd(pid)[-50:] if comm.startswith("python") else comm


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening() -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket, from `ss -ltnpH`."""
    import re

    rows = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        fields = line.split()
        addr, _, port = fields[3].rpartition(":")
        for pid in re.findall(r"pid=(\d+)", line):
            rows.append((addr, int(port), int(pid)))
    return rows


def http_probe(ip: str, port: int) -> str:
    """The status of GET / and /metrics without any token (or why none came), at the bound address."""
    host = ip.strip("[]").removeprefix("::ffff:")
    host = "127.0.0.1" if host in ("*", "0.0.0.0", "::") else host
    answers = []
    for path in ("/", "/metrics"):
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as r:
                answers.append(f"{path} {r.status}")
        except urllib.error.HTTPError as err:
            answers.append(f"{path} {err.code}")
        except Exception as err:  # gRPC ports answer HTTP/1 with a protocol error or reset
            answers.append(f"{path} {type(err).__name__}")
    return ", ".join(answers)


def cluster_ports() -> None:
    state = Path(tempfile.mkdtemp(prefix="exposure-cluster-"))
    token = state / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token)}
    script = [sys.executable, str(ROOT / "cluster" / "local_cluster.py")]
    started = subprocess.run(
        script + ["start", "--workers", "1", "--dir", str(state)], env=env, capture_output=True, text=True, timeout=240
    )
    print(started.stdout.strip() or started.stderr[-2000:])
    try:
        import json

        nodes = json.loads((state / "cluster.json").read_text())["nodes"]
        time.sleep(5)  # agents and metrics exporters come up after the ready line
        ours = tree([n["pid"] for n in nodes])
        rows = [(ip, port, proc_name(pid), http_probe(ip, port)) for ip, port, pid in set(listening()) if pid in ours]
        print(f"{'address':<16} {'port':>6}  {'process':<60}  unauthenticated HTTP")
        for ip, port, name, probe in sorted(rows, key=lambda r: (r[2], r[1])):
            print(f"{ip:<16} {port:>6}  {name:<60}  {probe}")
    finally:
        print(
            subprocess.run(
                script + ["stop", "--dir", str(state)], env=env, capture_output=True, text=True, timeout=120
            ).stdout.strip()
        )


def leftovers_after_driver_kill(extra_env: dict[str, str]) -> None:
    code = (
        "import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=False); "
        "ray.get(ray.remote(lambda: 1).remote()); print('ready', flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **extra_env},
    )
    assert driver.stdout.readline().strip() == "ready"
    session = tree([driver.pid]) - {driver.pid}
    print(f"embedded Ray {extra_env or ''}: driver pid {driver.pid}, {len(session)} processes of its own")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    t0 = time.monotonic()
    for wait in (0, 5, 10, 20, 30, 45, 60, 75, 90):
        time.sleep(max(0.0, t0 + wait - time.monotonic()))
        living = [p for p in session if alive(p)]
        print(f"  {wait:>3} s after the SIGKILL: {len(living)} alive {sorted({proc_name(p) for p in living})}")
        if not living:
            break
    for p in session:  # whatever is still there after 90 s: end it (ours, by pid)
        if alive(p):
            os.kill(p, signal.SIGKILL)


if __name__ == "__main__":
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.uname().nodename, f"{os.cpu_count()} CPUs")
    cluster_ports()
    leftovers_after_driver_kill({})
    # the agents' last act is reporting the raylet's death to the (dead) GCS, retried for this long
    leftovers_after_driver_kill({"RAY_gcs_rpc_server_reconnect_timeout_s": "5"})
