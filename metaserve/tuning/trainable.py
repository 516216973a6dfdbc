"""The trial of a sweep: compose its config from the base and the sampled values, then run it.

The trial itself is `runtime.tune_trainable.run_trial`, the same code path as `metaserve_trainable`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from metaserve.config import Config, parse_config
from metaserve.runtime.tune_trainable import run_trial, trial_resources
from metaserve.tuning.spec import compose


def trial_config(bases: dict[str, dict], params: dict[str, Any]) -> Config:
    """The validated metaserve config of a trial."""
    return parse_config(compose(bases, params))


def sweep_trainable(params: dict[str, Any], bases: dict[str, dict]) -> None:
    """Tune function trainable of one sweep trial (wrap with `tune.with_parameters(..., bases=...)`)."""
    run_trial(trial_config(bases, params))


def make_trainable(bases: dict[str, dict], fn: Callable[[dict[str, Any], dict[str, dict]], None] = sweep_trainable):
    """`fn` (by default `sweep_trainable`) with the bases shipped through the object store and per-trial
    placement groups."""
    trainable = tune.with_parameters(fn, bases=bases)
    return tune.with_resources(trainable, lambda params: trial_resources(trial_config(bases, params)))
