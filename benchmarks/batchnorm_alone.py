"""Does a query's answer depend on the other queries? Accuracy of trained runs, queries predicted together
or one by one.

Through the public API (`metaserve.load(run).adapt(support_x, support_y, norm=...).predict(query_x)`), on
`--episodes` meta-test episodes of `--ways`-way 1-shot with 15 query images per class: the support-statistics
mode gives the same answers whether the queries come together or alone; the transductive mode normalises a
batch of one query with that image's own statistics.

  nice -n 10 .venv/bin/python -m benchmarks.batchnorm_alone RUN_DIR [RUN_DIR ...] --ways 20 --episodes 100
"""

from __future__ import annotations

import argparse
import time

import torch

import metaserve
from benchmarks import common as _common
from benchmarks.common import markdown_table, print_machine, save
from metaserve.api import as_config
from metaserve.experiment import build_distribution


def accuracy(adapted, qx, qy, alone: bool) -> float:
    logits = torch.cat([adapted.predict(qx[i : i + 1]) for i in range(len(qx))]) if alone else adapted.predict(qx)
    return float((logits.argmax(1) == qy).double().mean())


def measure(run: str, a) -> list[dict]:
    model = metaserve.load(run, device="cpu")
    test = build_distribution(as_config(model.config, [f"task.ways={a.ways}", "task.shots=1", "task.query=15"]))
    sums = {(norm, alone): 0.0 for norm in ("support", "transductive") for alone in (False, True)}
    t0 = time.perf_counter()
    for i in range(a.episodes):
        t = test.sample(model.config.seed, 0, i, None, "test")
        for norm, alone in sums:
            sums[norm, alone] += accuracy(model.adapt(t.support_x, t.support_y, norm=norm), t.query_x, t.query_y, alone)
    seconds = time.perf_counter() - t0
    return [
        {
            "run": run.rstrip("/").split("/")[-1],
            "train_norm": model.config.model.batch_norm,
            "ways": a.ways,
            "test_norm": norm,
            "queries": "one by one" if alone else "together",
            "test_acc": 100 * s / a.episodes,
            "episodes": a.episodes,
            "seconds": round(seconds, 1),
        }
        for (norm, alone), s in sums.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description="query accuracy, predicted together vs one by one, in both batch-norm modes"
    )
    p.add_argument("runs", nargs="+")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="batchnorm-alone")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    info = _common.machine()
    print_machine(info)
    rows = [row for run in a.runs for row in measure(run, a)]
    print(markdown_table(rows, ["run", "train_norm", "ways", "test_norm", "queries", "test_acc", "episodes"], ".4g"))
    csv_path, json_path = save(a.tag, rows, info, {"args": vars(a)})
    print(f"\nwrote {csv_path.relative_to(_common.ROOT)} and {json_path.relative_to(_common.ROOT)}")


if __name__ == "__main__":
    main()
