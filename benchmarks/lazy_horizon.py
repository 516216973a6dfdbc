"""Lazy teacher-student MAML at long horizons: stability, cost per meta-step, and the paper's claim.

Three measurements, each a subcommand (sinusoid K=10, the shipped configs/sinusoid-lazy-maml.yaml step sizes):

  stability  lazy-maml at each k of --ks trains for up to --steps meta-steps or --budget-s seconds per k;
             reports the steps reached, whether any step was non-finite, and the validation-loss curve.
  compute    seconds per meta-step (one `batch_update` of --meta-batch tasks, median of --reps) of lazy-maml
             (exact and linearised) against second-order MAML at the same k, measured in one process.
  claim      trains lazy-maml (k=20, 50), MAML (k=1, 5), FOMAML and Reptile for the same number of
             meta-steps, then meta-tests each on --episodes held-out tasks: query MSE +- 95% CI after
             --eval-steps SGD steps (each learner at its own inner_lr).

  nice -n 10 .venv/bin/python -m benchmarks.lazy_horizon stability --ks 10,20,50,100 --budget-s 300
  nice -n 10 .venv/bin/python -m benchmarks.lazy_horizon compute --ks 1,5,20,50
  nice -n 10 .venv/bin/python -m benchmarks.lazy_horizon claim --steps 300
  nice -n 10 .venv/bin/python -m benchmarks.lazy_horizon claim --contenders "omniglot lazy-maml k=20,omniglot maml k=1"
      --steps 10 --log-every 5 --set train.meta_batch=2 --set train.val_tasks=5 --episodes 100 --eval-steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks import common as _common
from benchmarks.common import RESULTS, markdown_table, print_machine, save, train_for
from metaserve.api import as_config
from metaserve.evaluation import evaluate
from metaserve.experiment import build_distribution, build_learner

LAZY = "configs/sinusoid-lazy-maml.yaml"
RUNS = RESULTS / "runs" / "lazy_horizon"
# label -> (config, overrides): the claim's contenders, each from its shipped config.
CLAIM = {
    "lazy-maml k=20": (LAZY, ["algorithm.inner_steps=20"]),
    "lazy-maml k=50": (LAZY, ["algorithm.inner_steps=50"]),
    "maml k=1": ("configs/sinusoid-maml.yaml", ["algorithm.inner_steps=1"]),
    "maml k=5": ("configs/sinusoid-maml.yaml", ["algorithm.inner_steps=5"]),
    "fomaml k=5": ("configs/sinusoid-maml.yaml", ["algorithm.name=fomaml", "algorithm.inner_steps=5"]),
    "reptile k=32": ("configs/sinusoid-reptile.yaml", []),
    "omniglot lazy-maml k=20": ("configs/omniglot-lazy-maml-5w1s.yaml", []),
    "omniglot maml k=1": ("configs/omniglot-maml-5w1s.yaml", []),
}
SINUSOID = [label for label in CLAIM if not label.startswith("omniglot")]


def config(path: str, overrides: list[str], steps: int, log_every: int, extra: list[str]):
    return as_config(
        str(_common.ROOT / path),
        [
            *overrides,
            f"train.steps={steps}",
            f"train.log_every={log_every}",
            f"train.checkpoint_every={log_every}",
            "train.device=cpu",
            f"output_dir={RUNS}",
            *extra,
        ],
    )


def stability(a) -> list[dict]:
    """Train lazy-maml at each k; the validation-loss curve and whether any update was non-finite."""
    rows = []
    for k in a.ks:
        overrides = [f"algorithm.inner_steps={k}", f"algorithm.meta_gradient={a.mode}"]
        cfg = config(LAZY, overrides, a.steps, a.log_every, a.set)
        _, _, steps, seconds, metrics, status = train_for(
            cfg, a.budget_s, with_status=True, progress=lambda m, k=k: print(f"    k={k} {m}", flush=True)
        )
        val = metrics["val_loss"].dropna().tolist()
        rows.append(
            {
                "k": k,
                "mode": a.mode,
                "meta_batch": cfg.train.meta_batch,
                "steps": steps,
                "train_s": seconds,
                "status": status,
                "val_first": val[0],
                "val_min": min(val),
                "val_last": val[-1],
                "finite": bool(all(v == v and abs(v) < float("inf") for v in val)),
                "val_curve": [round(v, 4) for v in val],
            }
        )
        print(f"  k={k}: {steps} steps in {seconds:.0f} s, {status}, val {val[0]:.3f} -> {val[-1]:.3f}", flush=True)
    return rows


def seconds_per_step(path: str, overrides: list[str], meta_batch: int, reps: int) -> float:
    cfg = as_config(str(_common.ROOT / path), [*overrides, f"train.meta_batch={meta_batch}", "train.device=cpu"])
    learner, dist = build_learner(cfg), build_distribution(cfg)
    params = learner.initial_params()
    tasks = [dist.sample(cfg.seed, 0, i, None, "train").to(learner.device, learner.dtype) for i in range(meta_batch)]
    learner.algorithm.batch_update(params, tasks)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        learner.algorithm.batch_update(params, tasks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compute(a) -> list[dict]:
    """Median seconds per meta-step of lazy-maml (both modes) and MAML at the same k, interleaved per k."""
    rows = []
    for k in a.ks:
        row = {"k": k, "meta_batch": a.meta_batch}
        maml = [f"algorithm.inner_steps={k}"]
        row["maml_s"] = seconds_per_step("configs/sinusoid-maml.yaml", maml, a.meta_batch, a.reps)
        for mode in ("exact", "linearised"):
            lazy = [f"algorithm.inner_steps={k}", f"algorithm.meta_gradient={mode}"]
            row[f"lazy_{mode}_s"] = seconds_per_step(LAZY, lazy, a.meta_batch, a.reps)
        row["exact_over_maml"] = row["lazy_exact_s"] / row["maml_s"]
        row["exact_over_linearised"] = row["lazy_exact_s"] / row["lazy_linearised_s"]
        print(
            f"  k={k}: maml {row['maml_s']:.3f} s, lazy exact {row['lazy_exact_s']:.3f} s "
            f"({row['exact_over_maml']:.2f}x), linearised {row['lazy_linearised_s']:.3f} s",
            flush=True,
        )
        rows.append(row)
    return rows


def claim(a) -> list[dict]:
    """Equal meta-steps for every contender, then the held-out MSE +- 95% CI after --eval-steps steps."""
    rows = []
    for label in a.contenders:
        path, overrides = CLAIM[label]
        cfg = config(path, overrides, a.steps, a.log_every, a.set)
        _, params, steps, seconds, metrics, status = train_for(cfg, float("inf"), with_status=True)
        learner, dist = build_learner(cfg), build_distribution(cfg)
        row = {
            "contender": label,
            "steps": steps,
            "meta_batch": cfg.train.meta_batch,
            "inner_lr": cfg.algorithm.inner_lr,
            "train_s": seconds,
            "status": status,
        }
        for k in a.eval_steps:
            r = evaluate(learner, params, dist, episodes=a.episodes, steps=k)
            row[f"{r.metric}_{k}"], row[f"ci95_{k}"] = r.mean, r.ci95
        scores = ", ".join(
            f"{k} steps {r.metric} {row[f'{r.metric}_{k}']:.4f} +- {row[f'ci95_{k}']:.4f}" for k in a.eval_steps
        )
        print(f"  {label}: " + scores + f" ({steps} meta-steps, {seconds:.0f} s, {status})", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="lazy-maml at long horizons")
    p.add_argument("what", choices=["stability", "compute", "claim"])
    p.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 50, 100])
    p.add_argument(
        "--mode", choices=["exact", "linearised"], default="exact", help="stability: lazy-maml's meta_gradient"
    )
    p.add_argument("--steps", type=int, default=5000, help="meta-steps (stability: at most; claim: each)")
    p.add_argument("--budget-s", type=float, default=300.0, help="stability: training seconds per k")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--meta-batch", type=int, default=25, help="compute: tasks per meta-step")
    p.add_argument("--reps", type=int, default=5, help="compute: timed meta-steps per cell")
    p.add_argument("--contenders", type=lambda s: s.split(","), default=SINUSOID)
    p.add_argument("--eval-steps", type=lambda s: [int(x) for x in s.split(",")], default=[10])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--set", action="append", default=[], help="extra config override for every run")
    p.add_argument("--tag", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    info = _common.machine()
    print_machine(info)
    rows = {"stability": stability, "compute": compute, "claim": claim}[a.what](a)
    print()
    print(markdown_table([{k: v for k, v in r.items() if k != "val_curve"} for r in rows]))
    csv_path, json_path = save(a.tag or f"lazy_{a.what}", rows, info)
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
