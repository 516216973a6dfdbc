"""`metaserve jobs list|status|logs [--follow]|stop JOB_ID [--address URL]`: watch and control submitted jobs.

Thin views over the Ray Jobs API (see metaserve/jobs.py for the address and token rules). `status`
says where a metaserve job's results are: the run directory it reported in its logs, else the output
location `metaserve submit` recorded in the job's metadata.
"""

from __future__ import annotations

import argparse
import time

from metaserve import jobs
from metaserve.commands.submit import follow_to_end

STOP_WAIT_S = 60.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    actions = p.add_subparsers(dest="action", required=True)
    parsers = [actions.add_parser("list", help="all jobs of the cluster, newest last")]
    for name, text in (
        ("status", "a job's state and where its results are"),
        ("logs", "a job's output"),
        ("stop", "stop a running job (its checkpoints stay)"),
    ):
        q = actions.add_parser(name, help=text)
        q.add_argument("job_id", metavar="JOB_ID")
        parsers.append(q)
    actions.choices["logs"].add_argument(
        "--follow", "-f", action="store_true", help="stream until the job ends; exit status 0 only if it succeeded"
    )
    actions.choices["stop"].add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    for q in parsers:
        q.add_argument(
            "--address",
            help=f"the Jobs API (dashboard) URL (default: RAY_API_SERVER_ADDRESS, an http "
            f"RAY_ADDRESS, or {jobs.DEFAULT_ADDRESS})",
        )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cluster = jobs.connect(args.address)
    return {"list": list_jobs, "status": status, "logs": logs, "stop": stop}[args.action](cluster, args)


def list_jobs(cluster: jobs.Cluster, args: argparse.Namespace) -> int:
    found = sorted(cluster.list(), key=lambda j: j.start_time or 0)
    if not found:
        print(f"no jobs on {cluster.url}")
        return 0
    rows = [
        (
            j.submission_id or j.job_id or "-",
            str(j.status),
            _when(j.start_time),
            _duration(j),
            (j.metadata or {}).get("metaserve_command") or j.entrypoint,
        )
        for j in found
    ]
    widths = [max(len(r[i]) for r in rows + [("JOB_ID", "STATUS", "STARTED", "TIME", "")]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("JOB_ID", "STATUS", "STARTED", "TIME"), widths)) + "  COMMAND")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    return 0


def status(cluster: jobs.Cluster, args: argparse.Namespace) -> int:
    info = cluster.info(args.job_id)
    meta = info.metadata or {}
    print(f"job {args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    print(f"  command:  {meta.get('metaserve_command') or info.entrypoint}")
    print(
        f"  started:  {_when(info.start_time)}"
        + (f", ended {_when(info.end_time)}" if info.end_time else "")
        + f" ({_duration(info)})"
    )
    print(f"  results:  {results_of(cluster, args.job_id, meta)}")
    return 0


def results_of(cluster: jobs.Cluster, job_id: str, meta: dict) -> str:
    """The run directory the job reported, else the output location it was submitted with."""
    run_dirs = jobs.run_dirs_in(cluster.logs(job_id))
    if run_dirs:
        return ", ".join(run_dirs)
    root = meta.get("metaserve_results")
    return f"a new run directory in {root} (not created yet)" if root else "unknown (not a metaserve run)"


def logs(cluster: jobs.Cluster, args: argparse.Namespace) -> int:
    if args.follow:
        return follow_to_end(cluster, args.job_id)
    print(cluster.logs(args.job_id), end="")
    return 0


def stop(cluster: jobs.Cluster, args: argparse.Namespace) -> int:
    was_running = cluster.stop(args.job_id)
    if not was_running:
        print(f"job {args.job_id} was not running: {cluster.info(args.job_id).status}")
        return 0
    if args.no_wait:
        print(f"asked job {args.job_id} to stop")
        return 0
    final = cluster.wait(args.job_id, STOP_WAIT_S)
    print(f"job {args.job_id}: {final}")
    run_dirs = jobs.run_dirs_in(cluster.logs(args.job_id))
    if run_dirs:  # "<uri> (staged in <dir>)" for a URI output_dir: resume from the staged copy
        local = run_dirs[0].split(" (staged in ")[-1].removesuffix(")")
        print(
            f"  its run directory {run_dirs[0]} keeps the last checkpoint; continue it with\n"
            f"  metaserve submit --address {cluster.url} -- metaserve train --resume {local}"
        )
    return 0 if final in jobs.TERMINAL else 1


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(info) -> str:
    if not info.start_time:
        return "-"
    seconds = int(((info.end_time or time.time() * 1000) - info.start_time) / 1000)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
