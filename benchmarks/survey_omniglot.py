"""Omniglot 5-way 1-shot accuracy (+- 95% CI) of the survey's remaining learners (lstm-meta, mann, metanet)
after a short CPU budget each, on the minimal protocol (the shared split of configs/omniglot-*-5w1s.yaml:
meta-train on images_background_small1's 5 alphabets, meta-test on 3 alphabets of small2, x90 rotations).

Each learner trains with `train_loop` from configs/omniglot-<learner>-5w1s.yaml plus the overrides below
for `--budget-s` seconds (stopped at the first log row past it), then is meta-tested on `--episodes`
episodes with 15 query images per class.

  nice -n 10 .venv/bin/python -m benchmarks.survey_omniglot --learners lstm-meta,mann --budget-s 200
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

RUNS = RESULTS / "runs" / "survey-omniglot"

# Published figures (%), each paper's own protocol (see BENCHMARKS.md for the differences):
# lstm-meta: Ravi & Larochelle 2017 Table 1, mini-ImageNet 5-way 1-shot (no Omniglot figure);
# mann: Santoro et al. 2016 Table 1, Omniglot 5-way episodes of 10 instances per class, accuracy on the 2nd instance;
# metanet: Munkhdalai & Yu 2017 Table 1, Omniglot 5-way 1-shot.
PUBLISHED = {"lstm-meta": "43.44 (mini-ImageNet)", "mann": "82.8 (2nd instance)", "metanet": "98.95"}


def config_for(learner: str, a):
    return as_config(
        str(_common.ROOT / "configs" / f"omniglot-{learner}-5w1s.yaml"),
        [
            "task.ways=5",
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
            f"name=survey-{learner}-5w1s",
        ],
    )


def reuse(config) -> tuple:
    """The latest run of this config under RUNS (its last checkpoint), instead of training."""
    from metaserve.api import load

    run_dir = sorted(RUNS.glob(f"{config.name}-*"))[-1]
    model = load(run_dir)
    return run_dir, model.params, model.step, float("nan"), None  # training seconds: see the training log


def run(learner: str, a) -> dict:
    config = config_for(learner, a)
    if a.reuse:
        run_dir, params, steps, train_s, _ = reuse(config)
    else:

        def progress(m: str) -> None:
            print(f"    {learner} {m}", flush=True)

        run_dir, params, steps, train_s, _ = train_for(config, a.budget_s, progress=progress)
    test_config = as_config(config, ["task.query=15"])
    model = build_learner(test_config)
    t0 = time.perf_counter()
    r = evaluate(model, params, build_distribution(test_config), episodes=a.episodes, seed=config.seed)
    untrained = evaluate(
        model, model.initial_params(), build_distribution(test_config), episodes=a.episodes, seed=config.seed
    )
    row = {
        "learner": learner,
        "hidden": a.hidden,
        "meta_batch": a.meta_batch,
        "train_steps": steps,
        "train_s": round(train_s, 1),
        "test_acc": 100 * r.mean,
        "ci95": 100 * r.ci95,
        "untrained_acc": 100 * untrained.mean,
        "episodes": r.episodes,
        "eval_s": round(time.perf_counter() - t0, 1),
        "published": PUBLISHED.get(learner),
        "run_dir": str(run_dir.relative_to(_common.ROOT)),
    }
    print(
        f"  {learner} 5-way 1-shot: {row['test_acc']:.2f}% +- {row['ci95']:.2f}% after {steps} steps "
        f"({train_s:.0f} s; "
        f"untrained {row['untrained_acc']:.2f}%); published {row['published']}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description="Omniglot 5-way 1-shot accuracy of lstm-meta, mann, metanet, short budget")
    p.add_argument("--learners", default="lstm-meta,mann,metanet")
    p.add_argument("--hidden", type=int, default=32, help="conv4 channels")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--train-query", type=int, default=5, help="query images per class in training (test uses 15)")
    p.add_argument("--budget-s", type=float, default=200.0, help="training seconds per learner")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="meta-test the latest run of each learner instead of training")
    p.add_argument("--tag", default="survey-omniglot")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    rows = [run(name, a) for name in a.learners.split(",")]
    print()
    print(
        markdown_table(
            rows,
            [
                "learner",
                "hidden",
                "meta_batch",
                "train_steps",
                "train_s",
                "test_acc",
                "ci95",
                "untrained_acc",
                "published",
            ],
            ".4g",
        )
    )
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
