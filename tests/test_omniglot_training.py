"""Short Omniglot 5-way 1-shot runs on the shared split learn far beyond chance (20%)."""

from __future__ import annotations

import pytest

from metaserve.api import as_config
from metaserve.runtime.loop import train_loop

from conftest import OMNIGLOT, ROOT

pytestmark = pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot data not found at {OMNIGLOT}")

SHORT = [
    "train.steps=60",
    "train.log_every=30",
    "train.checkpoint_every=60",
    "train.meta_batch=4",
    "train.val_tasks=0",
    "model.hidden=32",
    "task.query=5",
    "eval.episodes=100",
    f"task.root={OMNIGLOT}",
    "train.device=cpu",
]


@pytest.mark.parametrize(
    "config, overrides, floor",
    [
        ("configs/omniglot-maml-5w1s.yaml", ["algorithm.name=fomaml"], 0.35),
        ("configs/omniglot-protonet-5w1s.yaml", [], 0.5),
    ],
)
def test_short_omniglot_run_beats_chance(tmp_path, config, overrides, floor):
    cfg = as_config(
        ROOT / config, SHORT + overrides + [f"output_dir={tmp_path}", f"task.cache_dir={tmp_path / 'cache'}"]
    )
    result = train_loop(cfg)
    assert result.test.metric == "acc" and result.test.episodes == 100
    assert result.test.mean - result.test.ci95 > floor, str(result.test)
