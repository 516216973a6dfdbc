"""The `metaserve` command line; each subcommand lives in `metaserve/commands/<name>.py`.

Every user mistake ends here as one sentence on stderr and exit code 2, without a traceback
(`--debug` or METASERVE_DEBUG=1 re-raises it); see `metaserve/errors.py` for what counts as one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from metaserve.errors import USER_ERRORS, one_sentence

COMMANDS = ["train", "eval", "tune", "report", "submit", "jobs", "init", "data", "serve"]


def build_parser() -> argparse.ArgumentParser:
    from metaserve import __version__

    parser = argparse.ArgumentParser(prog="metaserve", description="Distributed meta-learning on Ray.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or METASERVE_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"metaserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"metaserve.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 for a bad input (argparse's own errors included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse has printed its usage line and message
        return done.code if isinstance(done.code, int) else 2
    debug = args.debug or os.environ.get("METASERVE_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"metaserve: error: {one_sentence(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
