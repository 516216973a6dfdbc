"""Omniglot N-way 1-shot meta-test accuracy (+- 95% CI, 600 episodes) after a short CPU training budget.

The shared split (meta-train: the 5 alphabets of images_background_small1; meta-test:
Japanese_(katakana), Sanskrit, Tagalog of small2; x90 rotations as new classes). Each algorithm is
trained with `train_loop` from configs/omniglot-maml-5w1s.yaml (protonet: omniglot-protonet-5w1s)
plus overrides, for `--budget-s` seconds (stopped at the first checkpointed log row past it), then
meta-tested on 600 episodes with 15 query images per class (the standard protocol), whatever the
training query size was.

  .venv/bin/python benchmarks/omniglot.py --algorithms maml,fomaml,reptile,lazy-maml,protonet --budget-s 180
  .venv/bin/python benchmarks/omniglot.py --ways 20 --algorithms protonet,fomaml --budget-s 150 --tag omniglot-20w
"""
from __future__ import annotations

import argparse
import time

import _common
from _common import RESULTS, markdown_table, print_machine, save, train_for

import torch

from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner

RUNS = RESULTS / "runs" / "omniglot"

# Published N-way 1-shot Omniglot accuracies (%), full background set, tens of thousands of steps:
# MAML and FOMAML: Finn et al. 2017 Table 1 / Nichol et al. 2018 Table 1; ProtoNets: Snell et al. 2017 Table 1;
# Reptile (transductive): Nichol et al. 2018 Table 1. lazy-maml: no Omniglot figure is shipped with metaserve.
PUBLISHED = {5: {"maml": 98.7, "fomaml": 98.3, "reptile": 97.68, "protonet": 98.8},
             20: {"maml": 95.8, "fomaml": 89.4, "reptile": 89.43, "protonet": 96.0}}

# Hyperparameters per algorithm (config overrides). maml/fomaml: Finn et al.'s alpha=0.4, 1 inner
# step in training, 3 at test. reptile: plain-SGD inner loop (the paper used Adam, 5 steps), Adam on
# the mean displacement. lazy-maml: k=5 student steps, full leap (gamma=1) so the test-time
# adaptation (k plain SGD steps) is what the teacher was trained for.
ALGORITHMS = {
    "maml": ["algorithm.name=maml", "algorithm.inner_lr=0.4", "algorithm.inner_steps=1", "algorithm.eval_inner_steps=3"],
    "fomaml": ["algorithm.name=fomaml", "algorithm.inner_lr=0.4", "algorithm.inner_steps=1", "algorithm.eval_inner_steps=3"],
    "reptile": ["algorithm.name=reptile", "algorithm.inner_lr=0.1", "algorithm.inner_steps=5", "algorithm.eval_inner_steps=10"],
    "lazy-maml": ["algorithm.name=lazy-maml", "algorithm.inner_lr=0.1", "algorithm.inner_steps=5", "algorithm.eval_inner_steps=5",
                  "algorithm.leap=1.0"],
    "protonet": [],
}


def config_for(algorithm: str, ways: int, hidden: int, meta_batch: int, train_query: int, log_every: int, max_steps: int, extra: list[str]):
    base = "configs/omniglot-protonet-5w1s.yaml" if algorithm == "protonet" else "configs/omniglot-maml-5w1s.yaml"
    return as_config(str(_common.ROOT / base), [
        *ALGORITHMS[algorithm], "algorithm.outer.optimizer=adam", "algorithm.outer.lr=0.001",
        f"task.ways={ways}", "task.shots=1", f"task.query={train_query}", f"model.hidden={hidden}",
        f"train.meta_batch={meta_batch}", f"train.steps={max_steps}", f"train.log_every={log_every}",
        f"train.checkpoint_every={log_every}", "train.val_tasks=0", "train.device=cpu", "train.dtype=float32",
        f"output_dir={RUNS}", f"name=omniglot-{algorithm}-{ways}w1s", *extra])


def run(algorithm: str, a) -> dict:
    config = config_for(algorithm, a.ways, a.hidden, a.meta_batch, a.train_query, a.log_every, a.max_steps, a.set)
    run_dir, params, steps, train_s, metrics, status = train_for(config, a.budget_s, progress=lambda m: print(f"    {algorithm} {m}", flush=True), with_status=True)
    # meta-test with the standard 15 query images per class, whatever the training query size was
    test_config = as_config(config, ["task.query=15"])
    learner = build_learner(test_config)
    t0 = time.perf_counter()
    r = evaluate(learner.algorithm, params, build_distribution(test_config), seed=config.seed, episodes=a.episodes,
                 device=learner.device, dtype=learner.dtype)
    last = metrics.iloc[-1]
    row = {"algorithm": algorithm, "status": status, "ways": a.ways, "hidden": a.hidden, "meta_batch": a.meta_batch, "train_query": a.train_query,
           "train_steps": steps, "train_s": train_s, "tasks_per_s": float(metrics["tasks_per_s"].mean()),
           "train_acc_last": float(last["acc"]), "test_acc": 100 * r.mean, "ci95": 100 * r.ci95, "episodes": r.episodes,
           "eval_inner_steps": len(r.curve) - 1, "eval_s": time.perf_counter() - t0,
           "curve_acc": [round(100 * c["acc"], 2) for c in r.curve], "published": PUBLISHED.get(a.ways, {}).get(algorithm),
           "run_dir": str(run_dir.relative_to(_common.ROOT))}
    print(f"  {algorithm} {a.ways}-way 1-shot: {row['test_acc']:.2f}% +- {row['ci95']:.2f}% after {steps} steps "
          f"({train_s:.0f} s); published {row['published']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="Omniglot 1-shot meta-test accuracy after a short budget")
    p.add_argument("--algorithms", default="maml,fomaml,reptile,lazy-maml,protonet")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32, help="conv4 channels (the papers use 64)")
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--train-query", type=int, default=5, help="query images per class during meta-training (test uses 15)")
    p.add_argument("--budget-s", type=float, default=180.0, help="training seconds per algorithm")
    p.add_argument("--max-steps", type=int, default=60000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="extra config override for every algorithm")
    p.add_argument("--tag", default="omniglot")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    rows = [run(alg, a) for alg in a.algorithms.split(",")]
    print()
    print(markdown_table(rows, ["algorithm", "ways", "hidden", "meta_batch", "train_steps", "train_s", "tasks_per_s", "train_acc_last",
                                "test_acc", "ci95", "eval_inner_steps", "published"], ".4g"))
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
