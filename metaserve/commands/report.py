"""`metaserve report RUN_DIR|SWEEP_DIR [--episodes N] [--evaluate]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="PNG plots and a markdown summary of a run or a sweep")
    p.add_argument("path", help="run directory (metrics.parquet) or sweep directory (results.parquet)")
    p.add_argument("--episodes", type=int, default=100, help="test tasks behind the adaptation curves (default 100)")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="re-run the meta-test (eval.episodes tasks) for the summary instead of quoting test.json",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.errors import check_count
    from metaserve.progress import Progress
    from metaserve.report import report

    check_count("--episodes", args.episodes)
    for path in report(args.path, episodes=args.episodes, evaluate_test=args.evaluate, progress=Progress()):
        print(path)
    return 0
