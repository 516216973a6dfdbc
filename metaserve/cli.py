"""The `metaserve` command line; each subcommand lives in `metaserve/commands/<name>.py`."""
from __future__ import annotations

import argparse
import importlib
import sys

from metaserve.config import ConfigError

COMMANDS = ["train", "eval", "tune", "report", "submit", "jobs", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaserve", description="Distributed meta-learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"metaserve.commands.{name}").register(sub)
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
