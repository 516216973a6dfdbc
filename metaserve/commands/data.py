"""`metaserve data omniglot [--dest DIR] [--base-url URL]`: fetch and verify the Omniglot zips."""

from __future__ import annotations

import argparse

DEFAULT_DEST = "../shared/data/omniglot"  # the shipped configs' task.root


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="download a dataset (omniglot) and verify its checksums")
    p.add_argument("dataset", choices=["omniglot"], help="the dataset to fetch")
    p.add_argument(
        "--dest", default=DEFAULT_DEST, help=f"folder for the zips (default {DEFAULT_DEST}, the configs' task.root)"
    )
    p.add_argument(
        "--base-url",
        help="where the zips are (default: the brendenlake/omniglot GitHub raw URLs; or METASERVE_OMNIGLOT_URL)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.tasks.download import SUMS_FILE, fetch_omniglot

    fetched = fetch_omniglot(args.dest, base_url=args.base_url)
    for f in fetched:
        print(f"{f.path}  sha256 {f.sha256}  ({f.status})")
    if any("recorded" in f.status for f in fetched):
        print(
            f"no SHA-256 is published for these zips: the digests above were recorded in {args.dest}/{SUMS_FILE} "
            "(the full zips were checked against torchvision's published MD5s); later fetches must match them"
        )
    print(
        f"Omniglot is in {args.dest}; train with --set task.root={args.dest} (the shipped configs read "
        f"{DEFAULT_DEST} by default)"
    )
    return 0
