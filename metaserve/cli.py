"""The `metaserve` command line: train, eval."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metaserve.config import ConfigError


def _train(args: argparse.Namespace) -> int:
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
    result = train_loop(config, run_dir=args.resume, resume=bool(args.resume), progress=print)
    print("final metrics:")
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.6g}")
    print(f"run directory: {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from metaserve.api import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.episodes, args.steps)
    print(result)
    for row in result.curve:
        print("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaserve", description="Distributed meta-learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="meta-train from a YAML config (or resume a run)")
    train.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest good checkpoint")
    train.add_argument("--address", help="Ray cluster address (implies runtime.backend=ray)")
    train.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="meta-test a checkpoint on held-out tasks")
    ev.add_argument("checkpoint", help="run directory, checkpoints/<step> directory or state.pt")
    ev.add_argument("--episodes", type=int, help="test episodes (default: the config's eval.episodes)")
    ev.add_argument("--steps", type=int, help="inner steps at test time")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"metaserve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
