"""`metaserve train CONFIG [--set k=v ...] [--resume RUN_DIR] [--address ADDR]`."""
from __future__ import annotations

import argparse
from pathlib import Path

from metaserve.config import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from metaserve.config_help import sections_help

    p = sub.add_parser("train", help="meta-train from a YAML config (or resume a run)", epilog=sections_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest good checkpoint")
    p.add_argument("--address", help="Ray cluster address (implies runtime.backend=ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.api import as_config
    from metaserve.runtime.learner import train_loop
    from metaserve.store.rundir import read_run_config

    if args.resume:
        if args.config:
            raise ConfigError("give either CONFIG or --resume RUN_DIR, not both: a resumed run keeps its own config")
        config = as_config(read_run_config(Path(args.resume)), args.set)
    elif args.config:
        config = as_config(args.config, args.set)
    else:
        raise ConfigError("metaserve train needs CONFIG (a YAML file) or --resume RUN_DIR")
    if args.address:
        config = as_config(config, [f"runtime.address={args.address}", "runtime.backend=ray"])
    from metaserve.progress import Progress

    result = train_loop(config, run_dir=args.resume, resume=bool(args.resume), progress=Progress())
    print("final metrics:")
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.6g}")
    print(f"run directory: {result.run_dir}")
    return 0
