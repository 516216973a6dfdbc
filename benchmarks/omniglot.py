"""Omniglot N-way 1-shot meta-test accuracy (+- 95% CI) of any learner after an equal CPU training budget.

The shared split (meta-train: the 5 alphabets of images_background_small1; meta-test:
Japanese_(katakana), Sanskrit, Tagalog of small2; x90 rotations as new classes). Each learner trains
with `train_loop` from its config in configs/ (omniglot-<learner>-5w1s.yaml where one exists, else
omniglot-maml-5w1s.yaml with the overrides in ALGORITHMS) for `--budget-s` seconds (stopped at the
first checkpointed log row past it), then is meta-tested on `--episodes` episodes with 15 query images
per class (the standard protocol), whatever the training query size was. Batch norm is transductive
(conv4 normalises with each query batch's statistics), as in every Omniglot figure of BENCHMARKS.md.

  .venv/bin/python -m benchmarks.omniglot --algorithms maml,fomaml,reptile,lazy-maml,protonet --budget-s 120
  .venv/bin/python -m benchmarks.omniglot --algorithms protonet,matching,relation,siamese,maml --meta-batch 4 \
      --budget-s 40 --tag metric-omniglot
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import (
    RESULTS,
    ROOT,
    machine,
    markdown_table,
    meta_test,
    print_machine,
    relative,
    save,
    train_for,
)
from metaserve.api import as_config
from metaserve.config import Config

RUNS = RESULTS / "runs" / "omniglot"

# Published N-way 1-shot Omniglot accuracies (%), full background set, long training, each paper's own
# protocol: maml: Finn et al. 2017 Table 1; fomaml and reptile (transductive): Nichol et al. 2018 Table 1;
# protonet: Snell et al. 2017 Table 1; matching and the siamese re-implementation: Vinyals et al. 2016
# Table 1; relation: Sung et al. 2018 Table 1. lazy-maml: no Omniglot figure is recorded here.
PUBLISHED = {
    5: {
        "maml": 98.7,
        "fomaml": 98.3,
        "reptile": 97.68,
        "protonet": 98.8,
        "matching": 98.1,
        "relation": 99.6,
        "siamese": 96.7,
    },
    20: {
        "maml": 95.8,
        "fomaml": 89.4,
        "reptile": 89.43,
        "protonet": 96.0,
        "matching": 93.8,
        "relation": 97.6,
        "siamese": 88.0,
    },
}

# Overrides of the gradient learners on omniglot-maml-5w1s.yaml. maml/fomaml: Finn et al.'s alpha=0.4,
# 1 inner step in training, 3 at test. reptile: plain-SGD inner loop (the paper used Adam, 5 steps), Adam
# on the mean displacement. lazy-maml: k=5 student steps, full leap (gamma=1) so the test-time adaptation
# (k plain SGD steps) is what the teacher was trained for.
ALGORITHMS = {
    "maml": [
        "algorithm.name=maml",
        "algorithm.inner_lr=0.4",
        "algorithm.inner_steps=1",
        "algorithm.eval_inner_steps=3",
    ],
    "fomaml": [
        "algorithm.name=fomaml",
        "algorithm.inner_lr=0.4",
        "algorithm.inner_steps=1",
        "algorithm.eval_inner_steps=3",
    ],
    "reptile": [
        "algorithm.name=reptile",
        "algorithm.inner_lr=0.1",
        "algorithm.inner_steps=5",
        "algorithm.eval_inner_steps=10",
    ],
    "lazy-maml": [
        "algorithm.name=lazy-maml",
        "algorithm.inner_lr=0.1",
        "algorithm.inner_steps=5",
        "algorithm.eval_inner_steps=5",
        "algorithm.leap=1.0",
    ],
}


def config_for(algorithm: str, a: argparse.Namespace) -> Config:
    """The learner's shipped config with this benchmark's budget, size and CPU settings."""
    base = ROOT / "configs" / f"omniglot-{'maml' if algorithm in ALGORITHMS else algorithm}-5w1s.yaml"
    return as_config(
        str(base),
        [
            *ALGORITHMS.get(algorithm, []),
            "algorithm.outer.optimizer=adam",
            "algorithm.outer.lr=0.001",
            f"task.ways={a.ways}",
            "task.shots=1",
            f"task.query={a.train_query}",
            f"model.hidden={a.hidden}",
            f"train.meta_batch={a.meta_batch}",
            f"train.steps={a.max_steps}",
            f"train.log_every={a.log_every}",
            f"train.checkpoint_every={a.log_every}",
            "train.val_tasks=0",
            "train.device=cpu",
            "train.dtype=float32",
            f"output_dir={RUNS}",
            f"name=omniglot-{algorithm}-{a.ways}w1s",
            *a.set,
        ],
    )


def run(algorithm: str, a: argparse.Namespace) -> dict:
    """Train one learner for the budget, meta-test it with 15 query images per class; one table row."""
    config = config_for(algorithm, a)
    run_dir, params, steps, train_s, metrics, status = train_for(
        config, a.budget_s, progress=lambda m: print(f"    {algorithm} {m}", flush=True), with_status=True
    )
    r, eval_s = meta_test(config, params, episodes=a.episodes, overrides=["task.query=15"])
    last = metrics.iloc[-1]
    row = {
        "algorithm": algorithm,
        "status": status,
        "ways": a.ways,
        "hidden": a.hidden,
        "meta_batch": a.meta_batch,
        "train_query": a.train_query,
        "train_steps": steps,
        "train_s": train_s,
        "tasks_per_s": float(metrics["tasks_per_s"].mean()),
        "train_acc_last": float(last["acc"]),
        "test_acc": 100 * r.mean,
        "ci95": 100 * r.ci95,
        "episodes": r.episodes,
        "eval_inner_steps": len(r.curve) - 1,
        "eval_s": eval_s,
        "curve_acc": [round(100 * c["acc"], 2) for c in r.curve],
        "published": PUBLISHED.get(a.ways, {}).get(algorithm),
        "run_dir": relative(run_dir),
    }
    print(
        f"  {algorithm} {a.ways}-way 1-shot: {row['test_acc']:.2f}% +- {row['ci95']:.2f}% after {steps} steps "
        f"({train_s:.0f} s); published {row['published']}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="Omniglot 1-shot meta-test accuracy after an equal CPU budget")
    p.add_argument(
        "--algorithms",
        default="maml,fomaml,reptile,lazy-maml,protonet",
        help="comma-separated: maml, fomaml, reptile, lazy-maml, protonet, matching, relation, siamese",
    )
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32, help="conv4 channels (the papers use 64)")
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--train-query", type=int, default=5, help="query images per class during meta-training (test: 15)")
    p.add_argument("--budget-s", type=float, default=180.0, help="training seconds per algorithm")
    p.add_argument("--max-steps", type=int, default=60000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="extra config override for every algorithm")
    p.add_argument("--tag", default="omniglot")
    a = p.parse_args()
    algorithms = a.algorithms.split(",")
    for name in algorithms:  # every name checked before any training
        if name not in ALGORITHMS and not (ROOT / "configs" / f"omniglot-{name}-5w1s.yaml").exists():
            p.error(f"--algorithms: {name!r} is not a learner here; choose from {sorted({*ALGORITHMS, *PUBLISHED[5]})}")
    torch.set_num_threads(a.threads)
    info = machine()
    print_machine(info)
    rows = [run(alg, a) for alg in algorithms]
    print()
    print(
        markdown_table(
            rows,
            [
                "algorithm",
                "ways",
                "hidden",
                "meta_batch",
                "train_steps",
                "train_s",
                "tasks_per_s",
                "train_acc_last",
                "test_acc",
                "ci95",
                "eval_inner_steps",
                "published",
            ],
            ".4g",
        )
    )
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {relative(csv_path)} and {relative(json_path)}")


if __name__ == "__main__":
    main()
