"""Omniglot 1-shot accuracy (+- 95% CI) of protonet and MAML with transductive vs support-statistics batch norm.

The minimal protocol (meta-train: the 5 alphabets of images_background_small1; meta-test: Japanese_(katakana),
Sanskrit, Tagalog of small2; x90 rotations as new classes). Each (learner, ways, training mode) trains
with `train_loop` from configs/omniglot-<learner>-5w1s.yaml for `--budget-s` seconds with
`model.batch_norm` = transductive or support (queries normalised with their own statistics, or
with the support set's: models/norm.py), then every trained model is meta-tested in both test modes
(`evaluate(norm=...)`) on `--episodes` episodes with 15 query images per class.
protonet trains 5-way and is tested 5- and 20-way (a metric learner takes any number of classes);
MAML's head fixes its ways, so it trains once per test ways.

  nice -n 10 .venv/bin/python -m benchmarks.batchnorm_modes --budget-s 90 --episodes 300
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import common as _common
from benchmarks.common import RESULTS, markdown_table, print_machine, save, train_for
from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner

RUNS = RESULTS / "runs" / "batchnorm-modes"
MODES = ("transductive", "support")
EXTRA = {"maml": ["algorithm.inner_lr=0.4", "algorithm.inner_steps=1", "algorithm.eval_inner_steps=3"]}


def config_for(learner: str, ways: int, mode: str, a):
    return as_config(
        str(_common.ROOT / "configs" / f"omniglot-{learner}-5w1s.yaml"),
        [
            *EXTRA.get(learner, []),
            f"task.ways={ways}",
            "task.shots=1",
            f"task.query={a.train_query}",
            f"model.hidden={a.hidden}",
            f"model.batch_norm={mode}",
            f"train.meta_batch={a.meta_batch}",
            f"train.steps={a.max_steps}",
            f"train.log_every={a.log_every}",
            f"train.checkpoint_every={a.log_every}",
            "train.val_tasks=0",
            "train.device=cpu",
            "train.dtype=float32",
            f"output_dir={RUNS}",
            f"name=omniglot-{learner}-{ways}w1s-{mode}",
        ],
    )


def run(learner: str, train_ways: int, test_ways: list[int], mode: str, a) -> list[dict]:
    config = config_for(learner, train_ways, mode, a)
    run_dir, params, steps, train_s, _ = train_for(
        config, a.budget_s, progress=lambda m: print(f"    {learner} {mode} {m}", flush=True)
    )
    rows = []
    for ways in test_ways:
        test_config = as_config(config, ["task.query=15", f"task.ways={ways}"])
        learner_obj = build_learner(config)  # the trained model: its head (if any) keeps the training ways
        distribution = build_distribution(test_config)
        for test_mode in MODES:
            t0 = time.perf_counter()
            r = evaluate(learner_obj, params, distribution, episodes=a.episodes, norm=test_mode)
            rows.append(
                {
                    "learner": learner,
                    "train_ways": train_ways,
                    "test_ways": ways,
                    "train_norm": mode,
                    "test_norm": test_mode,
                    "train_steps": steps,
                    "train_s": round(train_s, 1),
                    "test_acc": 100 * r.mean,
                    "ci95": 100 * r.ci95,
                    "episodes": r.episodes,
                    "eval_s": round(time.perf_counter() - t0, 1),
                    "run_dir": str(run_dir.relative_to(_common.ROOT)),
                }
            )
            print(
                f"  {learner} trained {train_ways}-way ({mode}), tested {ways}-way ({test_mode}): "
                f"{rows[-1]['test_acc']:.2f}% +- {rows[-1]['ci95']:.2f}% after {steps} steps",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="Omniglot 1-shot accuracy, transductive vs support-statistics batch norm")
    p.add_argument("--learners", default="protonet,maml")
    p.add_argument("--hidden", type=int, default=32, help="conv4 channels (the papers use 64)")
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--train-query", type=int, default=5, help="query images per class in training (test uses 15)")
    p.add_argument("--budget-s", type=float, default=90.0, help="training seconds per (learner, ways, mode)")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="batchnorm-modes")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    t0 = time.perf_counter()
    plan = {"protonet": [(5, [5, 20])], "maml": [(5, [5]), (20, [20])]}
    rows = [
        row
        for name in a.learners.split(",")
        for train_ways, tests in plan[name]
        for mode in MODES
        for row in run(name, train_ways, tests, mode, a)
    ]
    print()
    print(
        markdown_table(
            rows,
            [
                "learner",
                "train_ways",
                "test_ways",
                "train_norm",
                "test_norm",
                "train_steps",
                "train_s",
                "test_acc",
                "ci95",
                "episodes",
                "eval_s",
            ],
            ".4g",
        )
    )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
