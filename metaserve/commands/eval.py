"""`metaserve eval CHECKPOINT [--episodes N] [--steps K] [--ways N --shots K --query Q] [--sources ... --alphabets ...]
[--batch-norm support|transductive] [--json PATH]`.

The options change the test tasks only (the model is the trained one): a metric learner may be
tested on more classes than it trained with, a classifier head on up to its outputs. A test split
that shares classes with the training split is warned about, and recorded in the JSON written with
`--json` (the fields of test.json).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="meta-test a checkpoint on held-out tasks")
    p.add_argument("checkpoint", help="run directory, checkpoints/<step> directory or state.pt")
    p.add_argument("--episodes", type=int, help="test episodes (default: the config's eval.episodes)")
    p.add_argument("--steps", type=int, help="inner steps at test time")
    p.add_argument("--ways", type=int, help="classes per test task (default: task.ways)")
    p.add_argument("--shots", type=int, help="support images per class (default: task.shots)")
    p.add_argument("--query", type=int, help="query images per class (default: task.query)")
    p.add_argument("--sources", help="comma-separated test zips or folders under task.root (task.test.sources)")
    p.add_argument("--alphabets", help="comma-separated omniglot test alphabets, or 'all' (task.test.alphabets)")
    p.add_argument(
        "--batch-norm",
        choices=["support", "transductive"],
        help="query normalisation: support statistics (default: eval.batch_norm) or the query set's own",
    )
    p.add_argument("--json", type=Path, help="also write the result, class overlap and batch-norm modes to this file")
    p.set_defaults(func=run)


def test_overrides(args: argparse.Namespace) -> list[str]:
    """The `key=value` overrides of the test tasks that the options ask for."""
    out = [f"task.{k}={getattr(args, k)}" for k in ("ways", "shots", "query") if getattr(args, k) is not None]
    if args.sources is not None:
        out.append(f"task.test.sources={json.dumps(_names(args.sources, '--sources'))}")
    if args.alphabets is not None:
        chosen = None if args.alphabets.strip().lower() == "all" else _names(args.alphabets, "--alphabets")
        out.append(f"task.test.alphabets={json.dumps(chosen)}")
    return out


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SystemExit(f"{option}={text!r} names nothing: give comma-separated names")
    return names


def run(args: argparse.Namespace) -> int:
    from metaserve.api import evaluate_checkpoint
    from metaserve.errors import check_count

    check_count("--episodes", args.episodes)
    check_count("--steps", args.steps, low=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_checkpoint(
            args.checkpoint, args.episodes, args.steps, overrides=test_overrides(args), norm=args.batch_norm
        )
    for w in caught:
        print(f"warning: {w.message}")
    print(f"{result} (batch norm: {result.record['batch_norm']})")
    for row in result.curve:
        print("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.json is not None:
        record = {
            "metric": result.metric,
            "mean": result.mean,
            "ci95": result.ci95,
            "episodes": result.episodes,
            "curve": result.curve,
            **result.record,
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0
