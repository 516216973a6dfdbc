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
from ray.tune.result import TIMESTEPS_TOTAL  # Tune's TensorBoard logger plots against it: meta-steps

from metaserve.config import Config, parse_config
from metaserve.runtime.executor import worker_bundle
from metaserve.runtime.loop import train_loop
from metaserve.store.checkpoint import checkpoint_dir, load_state

LEARNER_BUNDLE = {"CPU": 1.0}


def trial_resources(config: Config) -> tune.PlacementGroupFactory:
    """Bundle 0: the learner; bundles 1..n: the adaptation workers (Ray backend only)."""
    rc = config.runtime
    if rc.backend == "local":
        return tune.PlacementGroupFactory([LEARNER_BUNDLE])
    return tune.PlacementGroupFactory(
        [LEARNER_BUNDLE] + [worker_bundle(rc)] * rc.num_workers, strategy=rc.placement_strategy
    )


def run_trial(config: Config) -> None:
    """Run `train_loop` as the current Tune trial: one report per log row, checkpoints through Tune.

    The last row's report waits for the meta-test and carries its result and `done_training`, so
    schedulers count exactly one iteration per log row. `start_step` says where the trial (re)started.
    """
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    start = restore_tune_checkpoint(run_dir)
    last: dict = {}

    def on_log(row: dict, ckpt: Path | None) -> None:
        if row["step"] >= config.train.steps or row.get("stopped"):  # budget or patience: the last row too
            last.update(ckpt=ckpt)  # reported below, with the meta-test result
            return
        tune.report({**row, "start_step": float(start), TIMESTEPS_TOTAL: row["step"]}, checkpoint=_as_checkpoint(ckpt))

    result = train_loop(
        config, run_dir=run_dir, resume=True, on_log=on_log, tensorboard=False
    )  # Tune's logger writes it
    last_step = int(result.metrics.get("step", config.train.steps))
    tune.report(
        {**result.metrics, "start_step": float(start), "done_training": 1.0, TIMESTEPS_TOTAL: last_step},
        checkpoint=_as_checkpoint(last.get("ckpt")),
    )


def metaserve_trainable(params: dict[str, Any]) -> None:
    """Tune function trainable: `params` is a whole metaserve config (search values already resolved)."""
    run_trial(parse_config(params))


def _as_checkpoint(path: Path | None) -> Checkpoint | None:
    return Checkpoint.from_directory(str(path)) if path is not None else None


def restore_tune_checkpoint(run_dir: Path) -> int:
    """Make Tune's checkpoint (if any) the one `train_loop` resumes from; returns its step (0: none).

    Tune's checkpoint is authoritative: under PBT a trial continues from *another* trial's
    checkpoint at the step it reached itself, so the trial's own checkpoints are removed first.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as src:
        step = int(load_state(Path(src))["step"])
        shutil.rmtree(root)
        root.mkdir(parents=True)
        shutil.copytree(src, root / f"{step:08d}")
    return step
