"""Omniglot N-way 1-shot accuracy (+- 95% CI) of the metric learners next to protonet and MAML, equal CPU budget.

The shared split (meta-train: the 5 alphabets of images_background_small1; meta-test: Japanese_(katakana),
Sanskrit, Tagalog of small2; x90 rotations as new classes). Each learner trains with `train_loop` from
configs/omniglot-<learner>-5w1s.yaml (maml: omniglot-maml-5w1s, alpha 0.4, 1 inner step, 3 at test)
plus the overrides below for `--budget-s` seconds (stopped at the first log row past it), then is
meta-tested on `--episodes` episodes with 15 query images per class, whatever the training query was.

  .venv/bin/python benchmarks/metric_omniglot.py --ways 5 --budget-s 40
  .venv/bin/python benchmarks/metric_omniglot.py --ways 20 --budget-s 40 --tag metric-omniglot-20w
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

RUNS = RESULTS / "runs" / "metric-omniglot"

# Published N-way 1-shot Omniglot accuracies (%), full background set, long training, each paper's own
# protocol: matching and the siamese reimplementation: Vinyals et al. 2016 Table 1 (Koch et al. 2015 report
# 92.0% on their own 20-way within-alphabet task); relation: Sung et al. 2018 Table 1; protonet: Snell et
# al. 2017 Table 1; maml: Finn et al. 2017 Table 1.
PUBLISHED = {5: {"matching": 98.1, "relation": 99.6, "siamese": 96.7, "protonet": 98.8, "maml": 98.7},
             20: {"matching": 93.8, "relation": 97.6, "siamese": 88.0, "protonet": 96.0, "maml": 95.8}}

EXTRA = {"maml": ["algorithm.inner_lr=0.4", "algorithm.inner_steps=1", "algorithm.eval_inner_steps=3"]}


def config_for(learner: str, a):
    return as_config(str(_common.ROOT / "configs" / f"omniglot-{learner}-5w1s.yaml"), [
        *EXTRA.get(learner, []), f"task.ways={a.ways}", "task.shots=1", f"task.query={a.train_query}", f"model.hidden={a.hidden}",
        f"train.meta_batch={a.meta_batch}", f"train.steps={a.max_steps}", f"train.log_every={a.log_every}",
        f"train.checkpoint_every={a.log_every}", "train.val_tasks=0", "train.device=cpu", "train.dtype=float32",
        f"output_dir={RUNS}", f"name=omniglot-{learner}-{a.ways}w1s"])


def run(learner: str, a) -> dict:
    config = config_for(learner, a)
    run_dir, params, steps, train_s, metrics = train_for(config, a.budget_s, progress=lambda m: print(f"    {learner} {m}", flush=True))
    test_config = as_config(config, ["task.query=15"])
    model = build_learner(test_config)
    t0 = time.perf_counter()
    r = evaluate(model.algorithm, params, build_distribution(test_config), seed=config.seed, episodes=a.episodes,
                 device=model.device, dtype=model.dtype)
    row = {"learner": learner, "ways": a.ways, "hidden": a.hidden, "meta_batch": a.meta_batch, "train_steps": steps,
           "train_s": round(train_s, 1), "episodes_per_s": round(steps * a.meta_batch / train_s, 1),
           "test_acc": 100 * r.mean, "ci95": 100 * r.ci95, "episodes": r.episodes, "eval_s": round(time.perf_counter() - t0, 1),
           "published": PUBLISHED.get(a.ways, {}).get(learner), "run_dir": str(run_dir.relative_to(_common.ROOT))}
    print(f"  {learner} {a.ways}-way 1-shot: {row['test_acc']:.2f}% +- {row['ci95']:.2f}% after {steps} steps "
          f"({train_s:.0f} s); published {row['published']}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="Omniglot 1-shot accuracy of the metric learners under an equal CPU budget")
    p.add_argument("--learners", default="protonet,matching,relation,siamese,maml")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32, help="conv4 channels (the papers use 64)")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--train-query", type=int, default=5, help="query images per class in training (test uses 15)")
    p.add_argument("--budget-s", type=float, default=40.0, help="training seconds per learner")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="metric-omniglot")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    rows = [run(name, a) for name in a.learners.split(",")]
    print()
    print(markdown_table(rows, ["learner", "ways", "hidden", "meta_batch", "train_steps", "train_s", "episodes_per_s",
                                "test_acc", "ci95", "published"], ".4g"))
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
