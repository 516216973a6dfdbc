"""`metaserve tune SWEEP.yaml [--set k=v ...] [--address ADDR]` or `metaserve tune --resume SWEEP_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaserve.config import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="run a hyperparameter or curriculum sweep on Ray Tune (see tuning/)")
    p.add_argument("spec", nargs="?", help="sweep spec YAML (see tuning/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. num_samples=2 or scheduler.name=fifo",
    )
    p.add_argument(
        "--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (errored trials from their checkpoints)"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.tuning.spec import load_sweep

    if bool(args.spec) == bool(args.resume):
        raise ConfigError("metaserve tune needs exactly one of SPEC (a sweep YAML) and --resume SWEEP_DIR")
    sweep = load_sweep(args.spec, args.set) if args.spec else None  # every check before Ray or any trial starts
    from metaserve.runtime.cluster import connect
    from metaserve.tuning.run import check_resumable, resume_sweep, run_sweep

    if args.resume:
        if args.set:
            raise ConfigError("--set does not apply to --resume: a resumed sweep keeps the spec in its sweep.yaml")
        check_resumable(Path(args.resume))  # a folder that is not our signed sweep fails here, before Ray starts

    connect(args.address, quiet=True)
    result = run_sweep(sweep) if sweep is not None else resume_sweep(args.resume)
    print(result.table)
    for path in result.files:
        print(f"wrote {path}")
    print(f"sweep directory: {result.sweep_dir}")
    return 0
