"""Sinusoid regression end to end: meta-train MAML, adapt to a new sine wave from 10 points, predict.

    python examples/sinusoid_end_to_end.py             # about 5000 steps as in configs/sinusoid-maml.yaml
    python examples/sinusoid_end_to_end.py --steps 200 # a quick look

Finn et al. (2017), section 5.1: after meta-training, a few gradient steps on K=10 points of an unseen
sine A sin(x - phi) fit the whole curve. The script prints the query MSE after 0 and 10 steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import metaserve

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sinusoid-maml.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="meta-training steps")
    parser.add_argument("--episodes", type=int, default=600, help="meta-test episodes (600: the field's convention)")
    parser.add_argument("--output-dir", default="runs", help="where the run directory goes")
    args = parser.parse_args()

    steps = args.steps
    result = metaserve.train(
        CONFIG,
        [
            f"train.steps={steps}",
            f"train.log_every={max(1, min(50, steps // 4))}",
            f"train.checkpoint_every={steps}",
            f"eval.episodes={args.episodes}",
            f"output_dir={args.output_dir}",
        ],
        progress=True,
    )
    model = metaserve.load(result.run_dir)

    amplitude, phase = 3.0, 1.0  # a sine the model has not seen, with 10 support points
    gen = torch.Generator().manual_seed(0)
    support_x = torch.rand(10, 1, generator=gen) * 10 - 5
    query_x = torch.linspace(-5, 5, 100)[:, None]

    def true(x: torch.Tensor) -> torch.Tensor:
        return amplitude * torch.sin(x - phase)

    for k in (0, 10):
        prediction = model.adapt(support_x, true(support_x), steps=k).predict(query_x)
        mse = torch.mean((prediction - true(query_x)) ** 2).item()
        print(f"query MSE after {k:>2} inner steps: {mse:.4f} (amplitude {amplitude}, phase {phase})")
    print(f"run directory: {result.run_dir}; plots: metaserve report {result.run_dir}")


if __name__ == "__main__":
    main()
