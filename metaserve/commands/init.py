"""`metaserve init DIR`: copy the shipped configs/ and tuning/ specs into DIR to edit and run from there."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="copy the shipped configs/ and tuning/ sweep specs into a folder")
    p.add_argument(
        "dest", nargs="?", default=".", help="folder to copy into (default: the current one); existing files are kept"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.shipped import copy_shipped

    copied, kept = copy_shipped(args.dest)
    for path in copied:
        print(f"copied {path}")
    for path in kept:
        print(f"kept {path} (exists; not overwritten)")
    print(f"{len(copied)} files copied into {args.dest}; try: metaserve train {args.dest}/configs/sinusoid-maml.yaml")
    return 0
