"""Turns a validated Config into the live pieces of a run: task distribution, model, algorithm.

The learner and every Ray worker call `build` on the same config, so they hold identical pieces and
regenerate identical tasks from (seed, step, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metaserve.algorithms import Algorithm, build_algorithm
from metaserve.algorithms.outer import OuterOptimizer, build_outer, descent_direction
from metaserve.config import Config
from metaserve.models import build_model
from metaserve.models.functional import Params, init_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available: use 'auto' or 'cpu'")
    return device


def use_vmap(config: Config, device: torch.device) -> bool:
    """vmap over tasks, except conv4 on CPU where a per-task loop measured faster (BENCHMARKS.md)."""
    if config.train.vectorize != "auto":
        return config.train.vectorize == "on"
    return not (config.model.name == "conv4" and device.type == "cpu")


@dataclass
class Learner:
    """Model + algorithm on a device: everything needed to adapt and predict, no data."""

    config: Config
    algorithm: Algorithm
    device: torch.device
    dtype: torch.dtype

    def initial_params(self) -> Params:
        """Meta-parameters at step 0, a pure function of the seed: the model's initial parameters plus
        any the algorithm adds (`Algorithm.init_meta_params`)."""
        torch.manual_seed(self.config.seed)
        model = build_model(self.config.model, self.config.task, self.config.entry.head, self.config.algorithm)
        return self.algorithm.init_meta_params(init_params(model, self.dtype, self.device))

    @property
    def outer(self) -> OuterOptimizer:
        """The outer optimiser of `algorithm.outer`."""
        return build_outer(self.config.algorithm.outer)

    def outer_step(self, params: Params, mean: Params, state: dict) -> tuple[Params, dict]:
        """The outer step on a batch-mean contribution: descended on, or moved along, as the registry entry says."""
        return self.outer.update(params, descent_direction(self.config.entry.contribution, mean), state)


def build_learner(config: Config, device: torch.device | str | None = None) -> Learner:
    """The model and algorithm of a config, without loading any data."""
    device = resolve_device(config.train.device) if device is None else torch.device(device)
    model = build_model(config.model, config.task, config.entry.head, config.algorithm).to(device)
    algorithm = build_algorithm(config, model, use_vmap(config, device))
    algorithm.norm = config.model.batch_norm  # how meta-training normalises the queries (models/norm.py)
    return Learner(config, algorithm, device, DTYPES[config.train.dtype])


def build_distribution(config: Config):
    """The task distribution of a config (loads and validates image data: do it before training)."""
    from metaserve.tasks import make_distribution

    return make_distribution(config.task)
