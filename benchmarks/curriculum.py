"""Curriculum study: no teacher vs static (IV.A) vs adaptive (IV.B, Algorithm 1) teacher of Shevchuk,
"Teaching Your MAML", at the same number of meta-steps, evaluated as in its Fig. 1: on held-out tasks
of the hardest task distribution (the config's full task space: amplitude [0.1, 5] for sinusoid, all
N ways for Omniglot), the query loss and accuracy before adaptation (0 inner steps) and after it
(eval_inner_steps), mean +- 95% CI over the episodes, the whole adaptation curve, and plots
(adaptation curves, omega trajectories, meta-validation loss on the full space vs meta-step).

  .venv/bin/python -m benchmarks.curriculum --task sinusoid --steps 2000
  .venv/bin/python -m benchmarks.curriculum --task omniglot --steps 150 --episodes 200
"""

from __future__ import annotations

import argparse
import time

import matplotlib

from benchmarks.common import RESULTS, ROOT, machine, markdown_table, print_machine, save

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch.func import vmap

from metaserve.api import as_config
from metaserve.evaluation import ci95, episode_curve
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.loop import train_loop
from metaserve.store.metrics import read_metrics
from metaserve.tasks.base import stack_tasks

TEACHERS = ["none", "static", "adaptive"]
# One base per task; the teachers differ only in `curriculum.*`. Teacher settings: Table I's update
# rate 4 (every) for both; the adaptive step is Table I's 2 for ways, 0.5 on the amplitude range [1, 5].
SETUPS = {
    "sinusoid": (
        "configs/sinusoid-maml-adaptive.yaml",
        [
            "train.val_tasks=50",
            "curriculum.stages=[{amplitude_high: 1.0}, {amplitude_high: 2.0}, "
            "{amplitude_high: 3.5}, {amplitude_high: 5.0}]",
            "curriculum.threshold=[0.05, 0.18, 0.5]",
            "curriculum.patience=3",
        ],
    ),
    "omniglot": (
        "configs/omniglot-maml-5w1s.yaml",
        [
            "algorithm.name=fomaml",
            "model.hidden=32",
            "train.meta_batch=4",
            "train.val_tasks=20",
            "algorithm.eval_inner_steps=3",
            "curriculum.every=4",
            "curriculum.val_tasks=10",
            "curriculum.patience=2",
            "curriculum.threshold=[0.4, 0.6, 0.8]",
            "curriculum.target_loss=0.6",
            "curriculum.stages=[{ways: 2}, {ways: 3}, {ways: 4}, {ways: 5}]",
            "curriculum.params={ways: {low: 2, high: 5, start: 2}}",
            "curriculum.step=2",
            "curriculum.window=3",
        ],
    ),
}


def episode_table(learner, params, distribution, seed: int, episodes: int, steps: int, chunk: int = 50) -> torch.Tensor:
    """[episodes, steps + 1, 2]: query (loss, accuracy) after 0..steps inner steps of each test episode."""
    algo, out = learner.algorithm, []
    run = lambda sx, sy, qx, qy: episode_curve(algo, params, sx, sy, qx, qy, steps)  # noqa: E731
    for start in range(0, episodes, chunk):
        tasks = [
            distribution.sample(seed, 0, i, None, "test").to(learner.device, learner.dtype)
            for i in range(start, min(start + chunk, episodes))
        ]
        if algo.vectorize:
            b = stack_tasks(tasks)
            out.append(vmap(run)(b.support_x, b.support_y, b.query_x, b.query_y))
        else:
            out.append(torch.stack([run(t.support_x, t.support_y, t.query_x, t.query_y) for t in tasks]))
    return torch.cat(out)


def summarise(name: str, table: torch.Tensor, classification: bool) -> dict:
    row = {"teacher": name}
    for when, j in (("pre", 0), ("post", -1)):
        row[f"{when}_loss"], row[f"{when}_loss_ci95"] = float(table[:, j, 0].mean()), ci95(table[:, j, 0])
        if classification:
            row[f"{when}_acc"], row[f"{when}_acc_ci95"] = float(table[:, j, 1].mean()), ci95(table[:, j, 1])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(SETUPS), default="sinusoid")
    p.add_argument("--teachers", default=",".join(TEACHERS))
    p.add_argument("--steps", type=int, default=2000, help="meta-steps of every run")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--episodes", type=int, default=600, help="test episodes of the hardest distribution")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra config override for every run, e.g. curriculum.target_loss=0.5",
    )
    p.add_argument("--tag", default="", help="suffix of the result files and plot folder (e.g. seed1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine()
    print_machine(info)
    config_path, overrides = SETUPS[args.task]
    label = f"curriculum-{args.task}" + (f"-{args.tag}" if args.tag else "")
    out_dir = RESULTS / label
    out_dir.mkdir(parents=True, exist_ok=True)
    common = (
        overrides
        + [
            f"train.steps={args.steps}",
            f"train.log_every={args.log_every}",
            f"train.checkpoint_every={args.steps}",
            f"output_dir={RESULTS / 'runs' / f'curriculum-{args.task}'}",
        ]
        + args.set
    )
    rows, curves, metrics = [], {}, {}
    for name in args.teachers.split(","):
        config = as_config(
            str(ROOT / config_path), common + [f"curriculum.teacher={name}", f"name=curriculum-{args.task}-{name}"]
        )
        t0 = time.perf_counter()
        result = train_loop(config, final_eval=False, progress=lambda m: print(f"[{name}] {m}", flush=True))
        seconds = time.perf_counter() - t0
        learner, dist = build_learner(config), build_distribution(config)
        steps = config.eval.inner_steps or learner.algorithm.eval_inner_steps
        classification = learner.algorithm.kind == "classification"
        if not curves:  # before meta-training: the same initial parameters for every teacher (same seed)
            table = episode_table(learner, learner.initial_params(), dist, config.seed, args.episodes, steps)
            curves["init"] = table
            rows.append({**summarise("(initial parameters)", table, classification), "meta_steps": 0})
        table = episode_table(learner, result.params, dist, config.seed, args.episodes, steps)
        curves[name] = table
        df = read_metrics(result.run_dir)
        metrics[name] = df
        omega = {c.removeprefix("omega_"): float(df[c].iloc[-1]) for c in df if c.startswith("omega_")}
        rows.append(
            {
                **summarise(name, table, classification),
                "meta_steps": config.train.steps,
                "train_s": round(seconds, 1),
                "final_omega": ", ".join(f"{k}={v:g}" for k, v in omega.items()) or "-",
                "run_dir": str(result.run_dir.relative_to(ROOT)),
            }
        )
        print(f"[{name}] {rows[-1]}", flush=True)
    plots = plot(args.task, curves, metrics, classification, out_dir)
    extra = {
        "args": vars(args),
        "overrides": common,
        "plots": [str(p.relative_to(ROOT)) for p in plots],
        "curves": {
            k: {"loss": v[:, :, 0].mean(0).tolist(), "acc": v[:, :, 1].mean(0).tolist()} for k, v in curves.items()
        },
        "omega": {
            k: df[["step"] + [c for c in df if c.startswith(("omega_", "teacher_"))]].to_dict("list")
            for k, df in metrics.items()
        },
    }
    csv_path, json_path = save(label, rows, info, extra)
    cols = ["teacher", "meta_steps", "pre_loss", "pre_loss_ci95", "post_loss", "post_loss_ci95"]
    cols += ["pre_acc", "pre_acc_ci95", "post_acc", "post_acc_ci95"] if classification else []
    print(markdown_table(rows, cols + ["final_omega", "train_s"]))
    print(f"wrote {csv_path}, {json_path}, {', '.join(map(str, plots))}")


def plot(task: str, curves: dict, metrics: dict, classification: bool, out_dir) -> list:
    """adaptation.png (Fig. 1 protocol), omega.png, val.png."""
    files = []
    keys = [(0, "query loss")] + ([(1, "query accuracy")] if classification else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, (k, title) in zip(axes[0], keys):
        for name, table in curves.items():
            mean, half = table[:, :, k].mean(0), torch.tensor([ci95(table[:, j, k]) for j in range(table.shape[1])])
            x = range(table.shape[1])
            ax.plot(x, mean, marker="o", label="before meta-training" if name == "init" else f"teacher: {name}")
            ax.fill_between(x, mean - half, mean + half, alpha=0.2)
        ax.set(title=f"{task}, hardest distribution: {title}", xlabel="inner step", ylabel=title.split()[-1])
        ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out_dir / "adaptation.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    omega_cols = sorted({c for df in metrics.values() for c in df if c.startswith("omega_")})
    if omega_cols:
        fig, axes = plt.subplots(1, len(omega_cols), figsize=(6 * len(omega_cols), 4), squeeze=False)
        for ax, col in zip(axes[0], omega_cols):
            for name, df in metrics.items():
                if col in df:
                    ax.plot(df["step"], df[col], marker=".", label=f"teacher: {name}")
            ax.set(
                title=f"{task}: {col.removeprefix('omega_')} trained on",
                xlabel="meta-step",
                ylabel=col.removeprefix("omega_"),
            )
            ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(out_dir / "omega.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, df in metrics.items():
        ax.plot(df["step"], df["val_loss"], label=f"teacher: {name}")
    ax.set(
        title=f"{task}: meta-val loss on the full task space", xlabel="meta-step", ylabel="post-adaptation query loss"
    )
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out_dir / "val.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


if __name__ == "__main__":
    main()
