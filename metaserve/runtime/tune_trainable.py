"""The learner loop as a Ray Tune function trainable: the second entry point to `train_loop`.

Each trial reserves its whole worker group through its placement-group resource request (bundle 0
for the learner, one bundle per adaptation worker), so trials of a sweep never compete for workers
and a sweep scales across a cluster. Metrics and checkpoints go through `ray.tune.report`; a trial
restored by Tune continues from `ray.tune.get_checkpoint()` through the same resume path as
`metaserve train --resume`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Checkpoint

from metaserve.config import Config, parse_config
from metaserve.runtime.learner import train_loop
from metaserve.store.checkpoint import checkpoint_dir, load_state

LEARNER_BUNDLE = {"CPU": 1.0}


def trial_resources(config: Config) -> tune.PlacementGroupFactory:
    """Bundle 0: the learner; bundles 1..n: the adaptation workers (Ray backend only)."""
    rc = config.runtime
    if rc.backend == "local":
        return tune.PlacementGroupFactory([LEARNER_BUNDLE])
    worker = {"CPU": rc.cpus_per_worker, **({"GPU": rc.gpus_per_worker} if rc.gpus_per_worker else {})}
    return tune.PlacementGroupFactory([LEARNER_BUNDLE] + [worker] * rc.num_workers, strategy=rc.placement_strategy)


def metaserve_trainable(params: dict[str, Any]) -> None:
    """Tune function trainable: `params` is a whole metaserve config (search values already resolved)."""
    config = parse_config(params)
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    checkpoint_dir(run_dir).mkdir(parents=True, exist_ok=True)
    _restore_from_tune(run_dir)

    def on_log(row: dict, ckpt: Path | None) -> None:
        tune.report(row, checkpoint=Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None)

    result = train_loop(config, run_dir=run_dir, resume=True, on_log=on_log)
    tune.report({**result.metrics, "done_training": 1.0})


def _restore_from_tune(run_dir: Path) -> None:
    """Place Tune's checkpoint (if any) where train_loop's resume looks for it."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as src:
        step = int(load_state(Path(src))["step"])
        dst = checkpoint_dir(run_dir) / f"{step:08d}"
        if not dst.exists():
            shutil.copytree(src, dst)
