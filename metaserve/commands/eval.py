"""`metaserve eval CHECKPOINT [--episodes N] [--steps K]`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="meta-test a checkpoint on held-out tasks")
    p.add_argument("checkpoint", help="run directory, checkpoints/<step> directory or state.pt")
    p.add_argument("--episodes", type=int, help="test episodes (default: the config's eval.episodes)")
    p.add_argument("--steps", type=int, help="inner steps at test time")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metaserve.api import evaluate_checkpoint
    from metaserve.errors import check_count

    check_count("--episodes", args.episodes)
    check_count("--steps", args.steps, low=0)
    result = evaluate_checkpoint(args.checkpoint, args.episodes, args.steps)
    print(result)
    for row in result.curve:
        print("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return 0
