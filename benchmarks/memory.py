"""Peak memory of one meta-gradient: second-order MAML vs lazy-maml as the inner horizon k grows.

Omniglot 5-way 1-shot (15 query images per class), conv4 (hidden 64), float32, CPU. Each
(algorithm, k) runs in a fresh subprocess: after imports, data load, model build and one no-grad
forward pass, it records ru_maxrss as the baseline, computes the contribution of `--meta-batch`
tasks once (`Algorithm.batch_update`, the work of one meta-step), and reports the growth of the
peak resident set over the baseline (MB = 2**20 bytes). A run past `--timeout` seconds is stopped
and reported as such.

MAML differentiates through all k inner steps, so it keeps k steps of activations and their
gradient graphs; lazy-maml's exact meta-gradient keeps only parameter-sized checkpoints of the student's
trajectory (about 2 sqrt(k) copies, lazy.py) for its Hessian-vector products and should stay within 1.2x of
its k=1 figure. `lazy-maml:linearised` selects the linearised meta-gradient (meta_gradient=linearised).

  nice -n 10 .venv/bin/python -m benchmarks.memory --ks 1,10,50,100 --algorithms maml,lazy-maml,lazy-maml:linearised
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks import common as _common
from benchmarks.common import markdown_table, print_machine, save

MB = 2**20


def child(algorithm: str, k: int, meta_batch: int, hidden: int, vectorize: str) -> None:
    """Measure one (algorithm, k) in this process and print one JSON line."""
    import torch

    from metaserve.api import as_config
    from metaserve.experiment import build_distribution, build_learner

    torch.set_num_threads(1)
    algorithm, _, mode = algorithm.partition(":")  # lazy-maml:linearised -> meta_gradient=linearised
    overrides = [
        f"algorithm.name={algorithm}",
        f"algorithm.inner_steps={k}",
        "algorithm.inner_lr=0.1",
        f"model.hidden={hidden}",
        f"train.meta_batch={meta_batch}",
        "train.device=cpu",
        "train.dtype=float32",
        f"train.vectorize='{vectorize}'",
    ]
    if algorithm.startswith("lazy"):
        overrides.append("algorithm.leap=0.5")
    if mode:
        overrides.append(f"algorithm.meta_gradient={mode}")
    config = as_config(str(_common.ROOT / "configs/omniglot-maml-5w1s.yaml"), overrides)
    learner = build_learner(config)
    dist = build_distribution(config)
    params = learner.initial_params()
    tasks = [dist.sample(config.seed, 0, i, None, "train").to(learner.device, learner.dtype) for i in range(meta_batch)]
    with torch.no_grad():  # load kernels and allocator pools into the baseline
        learner.algorithm.forward(params, tasks[0].query_x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    t0 = time.perf_counter()
    update = learner.algorithm.batch_update(params, tasks)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_params = sum(v.numel() for v in params.values())
    finite = all(bool(torch.isfinite(v).all()) for v in update.contribution.values())
    print(
        json.dumps(
            {
                "baseline_mb": base / MB,
                "peak_mb": peak / MB,
                "delta_mb": (peak - base) / MB,
                "seconds": seconds,
                "params": n_params,
                "finite": finite,
                "query_loss": update.metrics.get("loss", float("nan")) / update.count,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description="peak memory of maml vs lazy-maml over k")
    p.add_argument("--ks", default="1,10,50,100")
    p.add_argument("--algorithms", default="maml,lazy-maml,lazy-maml:linearised")
    p.add_argument("--meta-batch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vectorize", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per (algorithm, k) subprocess")
    p.add_argument("--tag", default="memory")
    p.add_argument("--child", nargs=2, metavar=("ALGORITHM", "K"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.meta_batch, a.hidden, a.vectorize)
        return
    info = _common.machine()
    print_machine(info)
    rows = []
    for algorithm in a.algorithms.split(","):
        for k in [int(x) for x in a.ks.split(",")]:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--child",
                algorithm,
                str(k),
                "--meta-batch",
                str(a.meta_batch),
                "--hidden",
                str(a.hidden),
                "--vectorize",
                a.vectorize,
            ]
            row = {"algorithm": algorithm, "k": k, "meta_batch": a.meta_batch, "hidden": a.hidden}
            t0 = time.perf_counter()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, cwd=_common.ROOT)
                if out.returncode == 0:
                    row |= json.loads(out.stdout.strip().splitlines()[-1]) | {"status": "ok"}
                else:
                    row["status"] = (
                        f"failed (rc {out.returncode}): "
                        f"{out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else ''}"
                    )
            except subprocess.TimeoutExpired:
                row["status"] = f"timed out after {a.timeout:.0f} s"
            row["wall_s"] = time.perf_counter() - t0
            print(
                f"  {algorithm} k={k}: "
                + (
                    f"+{row['delta_mb']:.1f} MB over {row['baseline_mb']:.0f} MB, {row['seconds']:.2f} s"
                    if row["status"] == "ok"
                    else row["status"]
                ),
                flush=True,
            )
            rows.append(row)
    print()
    print(
        markdown_table(
            rows,
            ["algorithm", "k", "meta_batch", "delta_mb", "peak_mb", "baseline_mb", "seconds", "finite", "status"],
            ".4g",
        )
    )
    csv_path, json_path = save(
        a.tag, rows, info, {"meta_batch": a.meta_batch, "hidden": a.hidden, "vectorize": a.vectorize}
    )
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
