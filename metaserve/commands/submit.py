"""`metaserve submit [--address URL] [--no-wait] -- metaserve COMMAND ...`: run a metaserve command as a Ray job.

The job runs in Ray's copy of the working directory on the cluster (on the head node, unless Ray
places it elsewhere), and Ray deletes that copy later. So before submitting, relative paths are
pinned: a run's `output_dir` (or `--storage`) and its data directories become absolute paths (a URI
stays a URI), `--resume`/checkpoint paths become absolute, and a config file must lie inside the
shipped directory. The command's options and its config are validated here first: a typo fails at
once, before anything is uploaded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metaserve import jobs
from metaserve.config import ConfigError, apply_overrides, config_to_dict, is_uri, load_config, parse_config
from metaserve.jobs import JobsError

LOCAL_ONLY = ("submit", "jobs")  # commands that talk to a cluster from here, never run inside a job


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="run a metaserve command (train, eval, ...) as a job on a Ray cluster",
        description="Run a metaserve command as a Ray job, e.g. "
        "`metaserve submit -- metaserve train configs/sinusoid-maml-ray.yaml`.",
    )
    p.add_argument(
        "--address",
        help=f"the cluster's Jobs API (dashboard) URL (default: RAY_API_SERVER_ADDRESS, "
        f"an http RAY_ADDRESS, or {jobs.DEFAULT_ADDRESS})",
    )
    p.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    p.add_argument(
        "--storage",
        metavar="PATH_OR_URI",
        help="where the run directories go: a directory (made absolute) or a pyarrow URI such as "
        "s3://bucket/runs (default: the config's output_dir, relative to here)",
    )
    p.add_argument("--working-dir", default=".", help="directory shipped to the job (default: the current one)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="a variable for the job: NAME takes its value here, NAME=VALUE sets one (only these are sent)",
    )
    p.add_argument("--job-id", help="submission id (default: metaserve-COMMAND-TIME-RANDOM)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the job without contacting a cluster")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- metaserve COMMAND [ARGS ...]")
    p.set_defaults(func=run)


@dataclass
class Plan:
    """What the job runs and where its results go."""

    argv: list[str]  # arguments after `metaserve`
    results: str | None = None  # the output root (a directory or URI), None when unknown
    notes: list[str] = field(default_factory=list)

    @property
    def entrypoint(self) -> str:
        # `python -m` runs the shipped copy of metaserve (the job's working directory is first on sys.path).
        return shlex.join(["python", "-m", "metaserve.cli", *self.argv])


def run(args: argparse.Namespace) -> int:
    argv = command_argv(args.command)
    working_dir = Path(args.working_dir).resolve()
    if not working_dir.is_dir():
        raise JobsError(f"--working-dir {args.working_dir!r} is not a directory")
    plan = prepare(argv, Path.cwd(), working_dir, args.storage)
    env = jobs.forwarded_env(args.env)
    runtime_env = jobs.runtime_env(working_dir, env)
    for note in plan.notes:
        print(f"note: {note}")
    if args.dry_run:
        shown = {**runtime_env, "env_vars": jobs.shown_env(runtime_env["env_vars"])}
        print(
            json.dumps(
                {
                    "entrypoint": plan.entrypoint,
                    "runtime_env": shown,
                    "results": plan.results,
                    "uploaded_files": jobs.shipped_files(working_dir),
                },
                indent=2,
            )
        )
        return 0
    cluster = jobs.connect(args.address)
    job_id = args.job_id or f"metaserve-{plan.argv[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    metadata = {
        "metaserve_command": shlex.join(plan.argv),
        "metaserve_results": plan.results or "",
        "metaserve_submitted_from": f"{socket.gethostname()}:{Path.cwd()}",
    }
    job_id = cluster.submit(plan.entrypoint, runtime_env, metadata, job_id)
    tail = f"{job_id} --address {cluster.url}"
    print(f"submitted job {job_id} to {cluster.url}")
    print(f"  runs:    {plan.entrypoint}")
    if plan.results:
        where = "" if jobs.is_loopback(cluster.url) or is_uri(plan.results) else " on the node that runs the job"
        print(f"  results: a new run directory in {plan.results}{where} (`metaserve jobs status {job_id}` names it)")
    print(f"  follow:  metaserve jobs logs --follow {tail}")
    print(f"  stop:    metaserve jobs stop {tail}")
    if args.no_wait:
        return 0
    return follow_to_end(cluster, job_id)


def follow_to_end(cluster: jobs.Cluster, job_id: str) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded."""
    try:
        status = cluster.follow(job_id, lambda text: print(text, end="", flush=True))
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (metaserve jobs stop {job_id} --address {cluster.url})")
        return 130
    run_dirs = jobs.run_dirs_in(cluster.logs(job_id))
    print(f"job {job_id}: {status}" + (f"; run directory: {run_dirs[0]}" if run_dirs else ""))
    return 0 if status == "SUCCEEDED" else 1


def command_argv(command: list[str]) -> list[str]:
    """`[--] [metaserve] COMMAND ARGS...` -> [COMMAND, ARGS...], or a sentence saying what is expected."""
    argv = list(command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv[:1] and Path(argv[0]).name in ("metaserve", "metaserve.cli"):
        argv = argv[1:]
    if not argv:
        raise JobsError(
            "metaserve submit needs the command to run, e.g. "
            "`metaserve submit -- metaserve train configs/sinusoid-maml-ray.yaml`"
        )
    if argv[0] in LOCAL_ONLY:
        raise JobsError(f"`metaserve {argv[0]}` runs here, not as a job: submit a command such as train or eval")
    return argv


def prepare(argv: list[str], cwd: Path, working_dir: Path, storage: str | None) -> Plan:
    """Validate the metaserve command and pin its paths for the job (see the module docstring)."""
    from metaserve.cli import build_parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            ns = build_parser().parse_args(argv)  # the CLI's own parser: what the job will parse
    except SystemExit:  # argparse's sentence, e.g. "unrecognized arguments: --bogus"
        lines = said.getvalue().strip().splitlines() or ["?"]
        reason = lines[-1].removeprefix("metaserve: error: ")
        raise JobsError(f"the job's command `metaserve {shlex.join(argv)}` is not valid: {reason}") from None
    plan = Plan(list(argv))
    for key in ("config", "spec"):  # files the command reads: they travel with the working directory
        if getattr(ns, key, None):
            replace_arg(plan.argv, getattr(ns, key), shipped_path(getattr(ns, key), cwd, working_dir))
    for key in ("resume", "checkpoint"):  # a run or sweep directory, a checkpoint: not shipped, so absolute
        value = getattr(ns, key, None)
        if value and not is_uri(value) and not Path(value).is_absolute():
            replace_arg(plan.argv, value, str((cwd / value).resolve()))
    for run in getattr(ns, "runs", None) or []:  # `metaserve serve RUN_DIR...`: run directories, not shipped
        if "://" not in run and not Path(run).is_absolute():
            replace_arg(plan.argv, run, str((cwd / run).resolve()))
    pin = {"train": pin_train, "tune": pin_tune}.get(ns.command)
    if pin is not None:
        pin(plan, ns, cwd, storage)
    elif storage is not None:
        raise JobsError(f"--storage applies to train and tune; `metaserve {ns.command}` writes no run directory")
    return plan


def pin_train(plan: Plan, ns: argparse.Namespace, cwd: Path, storage: str | None) -> None:
    """Validate the run config; pin output_dir (absolute path or URI) and relative data paths."""
    from metaserve.config import check_output_dir, is_uri

    if ns.resume:  # a resumed run continues in its own directory
        if storage is not None:
            raise JobsError("--storage does not apply to --resume: a resumed run continues in its own directory")
        run_dir = (cwd / ns.resume).resolve()
        if run_dir.is_dir():  # else a path on the cluster, checked there
            from metaserve.store.rundir import read_run_config

            parse_config(apply_overrides(config_to_dict(read_run_config(run_dir)), ns.set))
        plan.results = str(run_dir)
        return
    if not ns.config:
        raise ConfigError("metaserve train needs CONFIG (a YAML file) or --resume RUN_DIR")
    config = load_config(cwd / ns.config, ns.set)
    out = pinned_output(storage, ns.set, "output_dir", config.output_dir, cwd)
    if is_uri(out):
        try:
            check_output_dir(out)
        except ValueError as err:
            raise JobsError(f"--storage: {err}") from None
    plan.argv += ["--set", f"output_dir={yaml_scalar(out)}"]
    plan.results = out
    for key in ("root", "cache_dir"):
        value = getattr(config.task, key, None)
        if value and not is_uri(value) and not Path(value).expanduser().is_absolute():
            pinned = str((cwd / value).resolve())
            plan.argv += ["--set", f"task.{key}={yaml_scalar(pinned)}"]
            plan.notes.append(
                f"task.{key}={value!r} is read from {pinned}: that path must exist on the node running the job "
                f"(on a remote cluster, pass --set task.{key}=<path there>)"
            )
    if config.runtime.backend == "local":
        plan.notes.append(
            "runtime.backend is 'local': the whole run is one process on the node running the job; add "
            "--set runtime.backend=ray to spread its tasks over the cluster's workers"
        )


def pin_tune(plan: Plan, ns: argparse.Namespace, cwd: Path, storage: str | None) -> None:
    """Validate the sweep spec; pin its storage directory."""
    if ns.resume:
        if storage is not None:
            raise JobsError("--storage does not apply to --resume: a resumed sweep continues in its own directory")
        plan.results = str((cwd / ns.resume).resolve())
        return
    if not ns.spec:
        raise ConfigError("metaserve tune needs SPEC (a sweep YAML) or --resume SWEEP_DIR")
    from metaserve.tuning.spec import load_sweep

    sweep = load_sweep(cwd / ns.spec, ns.set)
    out = pinned_output(storage, ns.set, "storage", sweep.storage, cwd)
    if is_uri(out):
        raise JobsError(f"--storage {out!r}: a sweep is stored in a directory (Tune writes it in place), not a URI")
    plan.argv += ["--set", f"storage={yaml_scalar(out)}"]
    plan.results = out
    for name, base in sweep.bases.items():
        root = (base.get("task") or {}).get("root")
        if root and not Path(str(root)).expanduser().is_absolute():
            plan.notes.append(
                f"base {name!r} reads task.root={root!r} relative to the job's directory; give an absolute "
                "task.root in that base (or its set: list) where the data lies on the cluster"
            )


def pinned_output(storage: str | None, overrides: list[str], key: str, configured: str, cwd: Path) -> str:
    """--storage or the configured output location, as an absolute path (a URI unchanged)."""
    if storage is not None and any(o.partition("=")[0] == key for o in overrides):
        raise JobsError(f"give the output location once: --storage or --set {key}=..., not both")
    if storage is not None:
        from metaserve.config import check_output_dir

        try:
            check_output_dir(storage)
        except ValueError as err:
            raise JobsError(f"--storage: {err}") from None
    out = storage if storage is not None else configured
    return out if is_uri(out) else str((cwd / Path(out).expanduser()).resolve())


def replace_arg(argv: list[str], old: str, new: str) -> None:
    """Replace the argument `old` (alone, or as `--option=old`) by `new`, in place; the last one wins,
    as in argparse."""
    for i in range(len(argv) - 1, -1, -1):
        if argv[i] == old:
            argv[i] = new
            return
        option, sep, value = argv[i].partition("=")
        if sep and option.startswith("-") and value == old:
            argv[i] = f"{option}={new}"
            return
    raise JobsError(f"could not find the argument {old!r} in {shlex.join(argv)!r}")


def shipped_path(path: str, cwd: Path, working_dir: Path) -> str:
    """`path` relative to the shipped working directory; JobsError if the job would not receive it."""
    full = (cwd / path).resolve()
    try:
        rel = full.relative_to(working_dir)
    except ValueError:
        raise JobsError(
            f"{path!r} is outside the working directory {str(working_dir)!r} that the job receives: "
            "move it there or pass --working-dir"
        ) from None
    excluded = {e.strip("/").removeprefix("**/") for e in jobs.EXCLUDES if e.endswith("/")}
    if any(part in excluded for part in rel.parts[:-1]):
        raise JobsError(
            f"{path!r} is in a directory that is not shipped with the job ({', '.join(sorted(excluded))}); "
            "copy it into the working directory"
        )
    return rel.as_posix()


def yaml_scalar(value: str) -> str:
    """`value` written so that `--set key=...` (parsed as YAML) reads it back as this exact string."""
    return value if yaml.safe_load(value) == value else json.dumps(value)
