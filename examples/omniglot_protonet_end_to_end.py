"""Omniglot 5-way 1-shot prototypical networks end to end: meta-train, then classify a held-out episode.

    python examples/omniglot_protonet_end_to_end.py               # configs/omniglot-protonet-5w1s.yaml
    python examples/omniglot_protonet_end_to_end.py --steps 20    # a quick look
    python examples/omniglot_protonet_end_to_end.py --root DIR    # Omniglot elsewhere (metaserve data omniglot)

Snell et al. (2017): a class is the mean embedding (prototype) of its support images; a query goes to
the nearest prototype. The script prints the meta-test accuracy and one held-out episode's accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import metaserve
from metaserve.experiment import build_distribution

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "omniglot-protonet-5w1s.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="meta-training steps")
    parser.add_argument("--root", help="Omniglot folder (default: the config's task.root)")
    parser.add_argument("--episodes", type=int, default=100, help="meta-test episodes")
    parser.add_argument("--output-dir", default="runs", help="where the run directory goes")
    args = parser.parse_args()

    overrides = [
        f"train.steps={args.steps}",
        f"train.log_every={max(1, min(5, args.steps))}",
        f"train.checkpoint_every={args.steps}",
        f"eval.episodes={args.episodes}",
        f"output_dir={args.output_dir}",
    ]
    overrides += [f"task.root={args.root}"] if args.root else []
    result = metaserve.train(CONFIG, overrides, progress=True)
    test = result.test
    print(f"meta-test accuracy: {100 * test.mean:.1f}% +- {100 * test.ci95:.1f}% over {test.episodes} episodes")

    model = metaserve.load(result.run_dir)
    # a held-out 5-way task (index 12345 of the test stream)
    episode = build_distribution(model.config).sample(model.config.seed, 0, 12345, None, "test")
    logits = model.adapt(episode.support_x, episode.support_y).predict(episode.query_x)
    accuracy = (logits.argmax(-1) == episode.query_y).float().mean().item()
    print(f"one held-out episode: {100 * accuracy:.0f}% of {len(episode.query_y)} query images right (chance 20%)")
    print(f"run directory: {result.run_dir}; plots: metaserve report {result.run_dir}")


if __name__ == "__main__":
    main()
