"""`metaserve train CONFIG [--set k=v ...] [--address ADDR]` or `metaserve train --resume RUN_DIR [--restart]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaserve.config import ConfigError
from metaserve.store.resume import SAFE_ON_RESUME


def register(sub: argparse._SubParsersAction) -> None:
    from metaserve.config_help import sections_help

    p = sub.add_parser(
        "train",
        help="meta-train from a YAML config (or resume a run)",
        epilog=sections_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.steps=100 (with --resume only " + ", ".join(SAFE_ON_RESUME) + ")",
    )
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its latest good checkpoint, with its own config"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="with --resume: start RUN_DIR's config over from step 0 in a new run folder (the old one is kept)",
    )
    p.add_argument("--address", help="Ray cluster address (implies runtime.backend=ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.api import as_config, resume_plan
    from metaserve.preflight import check_resources
    from metaserve.progress import Progress
    from metaserve.runtime.loop import train_loop
    from metaserve.store.resume import record_resume
    from metaserve.store.rundir import read_run_config

    address = [f"runtime.address={args.address}", "runtime.backend=ray"] if args.address else []
    if args.restart and not args.resume:
        raise ConfigError("--restart goes with --resume RUN_DIR: it starts that run's config over in a new run folder")
    if args.resume and args.config:
        raise ConfigError("give either CONFIG or --resume RUN_DIR, not both: a resumed run keeps its own config")
    if args.resume and not args.restart:
        config, step, changes = resume_plan(Path(args.resume), args.set + address)  # loads the checkpoint first
        check_resources(config)
        if changes:
            record_resume(Path(args.resume), step, changes)
        result = train_loop(config, run_dir=Path(args.resume), resume=True, progress=Progress(), keep_config=True)
    else:
        if not (args.config or args.resume):
            raise ConfigError("metaserve train needs CONFIG (a YAML file) or --resume RUN_DIR")
        source = read_run_config(Path(args.resume)) if args.restart else args.config
        config = as_config(source, args.set + address)
        check_resources(config)
        result = train_loop(config, progress=Progress())
    print("final metrics:")
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.6g}")
    print(f"run directory: {result.run_dir}")
    return 0
