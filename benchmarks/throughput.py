"""Meta-training throughput (meta-steps/s, tasks/s) of every execution path, measured in one run.

Workloads
  sinusoid: second-order MAML, mlp 40-40, meta-batch 32, k=5 inner steps, float32.
  omniglot: 5-way 1-shot FOMAML on conv4 (hidden 64), k=5, 15 query images per class, meta-batch 8 (and 16).

Paths
  plain      benchmarks.plain_maml: nn.Module + autograd.grad(create_graph=True), a loop over tasks.
  vec        metaserve `Algorithm.batch_update` with vectorize on (torch.func.vmap over tasks) + outer step.
  loop       the same with vectorize off (metaserve's per-task loop).
  local      `train_loop` with runtime.backend=local (its default vectorize), timed from metrics.parquet.
  ray1/ray2  `train_loop` with runtime.backend=ray and 1 / 2 workers (embedded local Ray), from metrics.parquet.
  mp2        (reference, not in the default list) two plain processes, no Ray, each computing half the
             meta-batch at once: what 2 workers could reach on this machine at best.
  vec-nopre, loop-nopre (ablations, not in the default list): vec / loop without the `_pre` metrics'
             extra query forward pass.

Every path regenerates its tasks from the seed each step (numpy sampling is in every timing), is warmed
up for --warmup steps and timed over --steps steps. benchmarks/paired_ray.py compares the sinusoid
Ray transports step by step, which this machine's noise needs for differences of a few percent.

  .venv/bin/python -m benchmarks.throughput --workload all
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch

from benchmarks import plain_maml
from benchmarks.common import RESULTS, ROOT, machine, markdown_table, print_machine, save
from metaserve.api import as_config
from metaserve.config import Config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.loop import train_loop
from metaserve.store.metrics import read_metrics

RUNS = RESULTS / "runs" / "throughput"


def workload_config(name: str, meta_batch: int, log_every: int, total_steps: int, extra: list[str] = ()) -> Config:
    common = [
        f"train.meta_batch={meta_batch}",
        f"train.steps={total_steps}",
        f"train.log_every={log_every}",
        f"train.checkpoint_every={total_steps}",
        "train.val_tasks=0",
        "train.device=cpu",
        "train.dtype=float32",
        f"output_dir={RUNS}",
        "runtime.cpus_per_worker=1",
    ]
    if name == "sinusoid":
        return as_config(
            str(ROOT / "configs/sinusoid-maml.yaml"), ["algorithm.inner_steps=5", "name=tp-sinusoid", *common, *extra]
        )
    return as_config(
        str(ROOT / "configs/omniglot-maml-5w1s.yaml"),
        [
            "algorithm.name=fomaml",
            "algorithm.inner_steps=5",
            "algorithm.inner_lr=0.4",
            "task.query=15",
            "model.hidden=64",
            f"name=tp-omniglot-mb{meta_batch}",
            *common,
            *extra,
        ],
    )


def time_metaserve_batch_update(
    config: Config, vectorize: bool, steps: int, warmup: int, pre_metrics: bool = True
) -> dict:
    """Single process: sample tasks, `batch_update`, outer step (what LocalExecutor + the learner do).

    `pre_metrics=False` is an ablation: the extra query forward pass every contribution makes only to
    report `loss_pre`/`acc_pre` is replaced by nothing, to show what that metric costs.
    """
    # quoted: YAML reads a bare on/off as a bool, which the config rejects
    config = as_config(config, [f"train.vectorize='{'on' if vectorize else 'off'}'"])
    learner = build_learner(config)
    dist = build_distribution(config)
    algo = learner.algorithm
    if not pre_metrics:
        algo.pre_metrics = lambda params, qx, qy: {}
    params = learner.initial_params()
    state = learner.outer.init(params)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        tasks = [
            dist.sample(config.seed, step, i, None, "train").to(learner.device, learner.dtype)
            for i in range(config.train.meta_batch)
        ]
        update = algo.batch_update(params, tasks)
        mean = update.mean_contribution()
        params, state = learner.outer_step(params, mean, state)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return {"step_time": statistics.fmean(times), "step_time_median": statistics.median(times)}


def _half_worker(args):
    config_dict, indices, steps, warmup = args
    torch.set_num_threads(1)
    config = as_config(config_dict)
    learner = build_learner(config)
    dist = build_distribution(config)
    params = learner.initial_params()
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        tasks = [dist.sample(config.seed, step, i, None, "train") for i in indices]
        learner.algorithm.batch_update(params, tasks)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.fmean(times)


def time_two_processes(config: Config, steps: int, warmup: int) -> dict:
    """Ceiling for 2 workers on this machine: two plain processes (no Ray) each computing half of the
    meta-batch at the same time; step time = the slower half (no communication, no outer step)."""
    import multiprocessing as mp

    mb = config.train.meta_batch
    halves = [list(range(0, mb // 2)), list(range(mb // 2, mb))]
    with mp.get_context("spawn").Pool(2) as pool:
        means = pool.map(_half_worker, [(config.model_dump(mode="json"), h, steps, warmup) for h in halves])
    return {"step_time": max(means), "step_time_median": max(means)}


def time_train_loop(config: Config, warmup: int) -> dict:
    """`train_loop` on the config's backend; timings are the metrics rows after the warm-up row(s)."""
    result = train_loop(config, final_eval=False)
    df = read_metrics(result.run_dir)
    timed = df[df["step"] > warmup]
    out = {"step_time": float(timed["step_time"].mean()), "step_time_median": float(timed["step_time"].median())}
    for col in ("worker_time", "comm_time", "learner_time"):
        out[col] = float(timed[col].mean())
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return out


def measure(name: str, meta_batch: int, steps: int, warmup: int, path: str) -> dict:
    """One timing of one path: mean step time over `steps` steps after `warmup`."""
    total = warmup + steps
    if path == "plain":
        if name == "sinusoid":
            return plain_maml.time_plain("sinusoid", meta_batch, 5, 0.01, False, steps, warmup)
        return plain_maml.time_plain("omniglot", meta_batch, 5, 0.4, True, steps, warmup, hidden=64)
    if path in ("vec", "loop", "vec-nopre", "loop-nopre"):
        return time_metaserve_batch_update(
            workload_config(name, meta_batch, warmup, total),
            path.startswith("vec"),
            steps,
            warmup,
            pre_metrics=not path.endswith("nopre"),
        )
    if path == "local":
        return time_train_loop(workload_config(name, meta_batch, warmup, total, ["runtime.backend=local"]), warmup)
    if path == "mp2":
        return time_two_processes(workload_config(name, meta_batch, warmup, total), steps, warmup)
    if path in ("ray1", "ray2"):
        n = int(path[-1])
        return time_train_loop(
            workload_config(name, meta_batch, warmup, total, ["runtime.backend=ray", f"runtime.num_workers={n}"]),
            warmup,
        )
    raise ValueError(f"unknown path {path!r}")


def run_workload(
    name: str, meta_batch: int, steps: int, warmup: int, paths: list[str], repeats: int
) -> tuple[list[dict], list[dict]]:
    """Time every path `repeats` times, interleaved (path order is repeated), so slow phases of a shared
    machine hit every path alike; the summary row of a path holds the median over repeats."""
    raw = []
    for rep in range(repeats):
        for path in paths:
            t0 = time.perf_counter()
            r = measure(name, meta_batch, steps, warmup, path)
            raw.append(
                {
                    "workload": name,
                    "meta_batch": meta_batch,
                    "path": path,
                    "repeat": rep,
                    **r,
                    "steps": steps,
                    "warmup": warmup,
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(
                f"  {name} mb{meta_batch} {path} (repeat {rep}): {1e3 * r['step_time']:.1f} ms/step, "
                f"{meta_batch / r['step_time']:.1f} tasks/s",
                flush=True,
            )
    rows = []
    for path in paths:
        mine = [r for r in raw if r["path"] == path]
        times = [r["step_time"] for r in mine]
        row = {
            "workload": name,
            "meta_batch": meta_batch,
            "path": path,
            "step_time": statistics.median(times),
            "step_time_min": min(times),
            "step_time_max": max(times),
            "repeats": len(times),
        }
        for col in ("worker_time", "comm_time", "learner_time"):
            if col in mine[0]:
                row[col] = statistics.median(r[col] for r in mine)
        row["meta_steps_per_s"] = 1.0 / row["step_time"]
        row["tasks_per_s"] = meta_batch / row["step_time"]
        if "comm_time" in row:
            row["learner_comm_share"] = statistics.median(
                (r["learner_time"] + r["comm_time"]) / r["step_time"] for r in mine
            )
        rows.append(row)
    base = {r["path"]: r["step_time"] for r in rows}
    for r in rows:
        for ref in ("plain", "vec", "loop", "ray1"):
            if ref in base and r["path"] != ref:
                r[f"speed_vs_{ref}"] = base[ref] / r["step_time"]
    return rows, raw


def check_plain_matches_metaserve() -> float:
    """Max |plain - metaserve| of one sinusoid task's second-order MAML meta-gradient (k=5, float64)."""
    from metaserve.algorithms import MAML
    from metaserve.models import MLP
    from metaserve.tasks.sinusoid import Sinusoid

    torch.manual_seed(0)
    plain = plain_maml.PlainMLP().double()
    model = MLP(1, 1, (40, 40))
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone() for n, p in zip(names, plain.parameters())}
    task = Sinusoid().sample(0, 0, 0).to("cpu", torch.float64)
    fast = list(plain.parameters())
    for _ in range(5):
        g = torch.autograd.grad(
            torch.nn.functional.mse_loss(plain(task.support_x, fast), task.support_y), fast, create_graph=True
        )
        fast = [w - 0.01 * gi for w, gi in zip(fast, g)]
    ref = torch.autograd.grad(
        torch.nn.functional.mse_loss(plain(task.query_x, fast), task.query_y), list(plain.parameters())
    )
    got = MAML(model.double(), "regression", inner_lr=0.01, inner_steps=5, vectorize=False).task_update(theta, task)
    return max(float((got.contribution[n] - r).abs().max()) for n, r in zip(names, ref))


def main() -> None:
    p = argparse.ArgumentParser(description="metaserve meta-training throughput")
    p.add_argument("--workload", choices=["sinusoid", "omniglot", "all"], default="all")
    p.add_argument("--paths", default="plain,vec,loop,local,ray1,ray2")
    p.add_argument("--sinusoid-steps", type=int, default=60)
    p.add_argument("--sinusoid-warmup", type=int, default=10)
    p.add_argument("--omniglot-steps", type=int, default=8)
    p.add_argument("--omniglot-warmup", type=int, default=2)
    p.add_argument("--omniglot-meta-batch", default="8", help="comma-separated, e.g. 8,16")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of the path list (median reported)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads of this process (Ray workers use cpus_per_worker=1)"
    )
    p.add_argument("--tag", default="throughput", help="results/<tag>.csv/.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = machine()
    print_machine(info)
    err = check_plain_matches_metaserve()
    print(f"check: plain vs metaserve second-order MAML meta-gradient (k=5, float64), max abs diff {err:.2e}")
    paths = a.paths.split(",")
    rows, raw = [], []
    if a.workload in ("sinusoid", "all"):
        summary, timings = run_workload("sinusoid", 32, a.sinusoid_steps, a.sinusoid_warmup, paths, a.repeats)
        rows, raw = rows + summary, raw + timings
    if a.workload in ("omniglot", "all"):
        for mb in [int(x) for x in a.omniglot_meta_batch.split(",")]:
            summary, timings = run_workload("omniglot", mb, a.omniglot_steps, a.omniglot_warmup, paths, a.repeats)
            rows, raw = rows + summary, raw + timings
    extra = {"plain_vs_metaserve_grad_maxabs": err, "timings": raw}
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
    cols = [
        "workload",
        "meta_batch",
        "path",
        "step_time",
        "step_time_min",
        "step_time_max",
        "meta_steps_per_s",
        "tasks_per_s",
        "speed_vs_plain",
        "speed_vs_vec",
        "speed_vs_loop",
        "speed_vs_ray1",
        "worker_time",
        "comm_time",
        "learner_time",
        "learner_comm_share",
    ]
    print()
    print(markdown_table(rows, cols))
    csv_path, json_path = save(a.tag, rows, info, extra)
    print(f"\nwrote {csv_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
