"""The Python API: `train`, `load` (a MetaModel for few-shot use) and `evaluate_checkpoint`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from metaserve.config import Config, ConfigError, load_config, parse_config
from metaserve.evaluation import EvalResult, evaluate
from metaserve.experiment import Learner, build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.runtime.learner import TrainResult, train_loop
from metaserve.store.checkpoint import load_state, resolve_checkpoint


def as_config(config: Config | dict[str, Any] | str | Path, overrides: list[str] | None = None) -> Config:
    """A Config from a Config, a plain dict or a YAML path (with optional key=value overrides)."""
    if isinstance(config, Config):
        return config if not overrides else as_config(config.model_dump(mode="json"), overrides)
    if isinstance(config, dict):
        from metaserve.config import apply_overrides

        return parse_config(apply_overrides(config, overrides or []))
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise ConfigError(f"config must be a Config, a dict or a YAML path, got {type(config).__name__}")


def train(config: Config | dict[str, Any] | str | Path, overrides: list[str] | None = None, *,
          resume: str | Path | None = None, progress: Callable[[str], None] | bool | None = None) -> TrainResult:
    """Meta-train and evaluate; returns the run directory, final parameters and final metrics.

    `overrides` are `section.key=value` strings, as `metaserve train --set`. `progress`: None (default)
    shows a live progress bar in an interactive terminal and stays silent elsewhere; True always
    reports (plain lines when not a terminal), False never; or pass a callback such as `print`.
    """
    from metaserve.progress import as_progress

    config = as_config(config, overrides)
    return train_loop(config, run_dir=resume, resume=resume is not None, progress=as_progress(progress))


@dataclass
class AdaptedModel:
    """A model adapted to one task's support set."""

    learner: Learner
    params: Params

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Regression outputs, or class logits, for inputs shaped like the support inputs."""
        x = x.to(self.learner.device, self.learner.dtype)
        return self.learner.algorithm.predict(self.params, x)


@dataclass
class MetaModel:
    """Meta-learned parameters plus the algorithm that adapts them: the few-shot API."""

    learner: Learner
    params: Params
    step: int

    @property
    def config(self) -> Config:
        return self.learner.config

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> AdaptedModel:
        """Adapt to a support set (`steps` inner steps; default: the algorithm's eval_inner_steps)."""
        dev, dt = self.learner.device, self.learner.dtype
        y = support_y.to(dev, dt) if support_y.is_floating_point() else support_y.to(dev)
        return AdaptedModel(self.learner, self.learner.algorithm.adapt(self.params, support_x.to(dev, dt), y, steps))


def load(checkpoint: str | Path, device: str | None = None) -> MetaModel:
    """A MetaModel from a run directory (latest checkpoint), a checkpoint directory or a state.pt."""
    state = load_state(resolve_checkpoint(checkpoint))
    config = parse_config(state["config"])
    learner = build_learner(config, device)
    params = {k: v.to(learner.device, learner.dtype) for k, v in state["params"].items()}
    return MetaModel(learner, params, int(state["step"]))


def evaluate_checkpoint(checkpoint: str | Path, episodes: int | None = None, steps: int | None = None) -> EvalResult:
    """Meta-test a checkpoint on its config's held-out split."""
    model = load(checkpoint)
    cfg = model.config
    return evaluate(model.learner.algorithm, model.params, build_distribution(cfg), seed=cfg.seed,
                    episodes=episodes or cfg.eval.episodes, steps=steps if steps is not None else cfg.eval.inner_steps,
                    device=model.learner.device, dtype=model.learner.dtype)
