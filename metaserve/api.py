"""The Python API: `train`, `load` (a MetaModel for few-shot use) and `evaluate_checkpoint`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from metaserve.config import Config, ConfigError, load_config, parse_config
from metaserve.errors import check_count
from metaserve.evaluation import EvalResult, evaluate
from metaserve.experiment import Learner, build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.preflight import check_resources
from metaserve.runtime.loop import TrainResult, train_loop
from metaserve.store.checkpoint import load_checkpoint, require_state
from metaserve.store.resume import changed_keys, check_safe, record_resume, resume_config
from metaserve.store.rundir import read_run_config


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


def train(config: Config | dict[str, Any] | str | Path | None = None, overrides: list[str] | None = None, *,
          resume: str | Path | None = None, progress: Callable[[str], None] | bool | None = None) -> TrainResult:
    """Meta-train and evaluate; returns the run directory, final parameters and final metrics.

    `overrides` are `section.key=value` strings, as `metaserve train --set`. `progress`: None (default)
    shows a live progress bar in an interactive terminal and stays silent elsewhere; True always
    reports (plain lines when not a terminal), False never; or pass a callback such as `print`.
    With `resume`, the run continues from its latest good checkpoint with its own config; a `config`
    or `overrides` given too may change only the keys of `store.resume.SAFE_ON_RESUME` (recorded in the
    run's resume.jsonl). A run without a loadable checkpoint is an error, and nothing in it is written.
    """
    from metaserve.progress import as_progress

    say = as_progress(progress)
    if resume is None:
        if config is None:
            raise ConfigError("metaserve.train needs a config (a Config, a dict or a YAML path) or resume=RUN_DIR")
        config = as_config(config, overrides)
        check_resources(config)
        return train_loop(config, progress=say)
    run_dir = Path(resume)
    base, step, _ = resume_plan(run_dir, [])
    new = as_config(base if config is None else config, overrides)
    changes = changed_keys(base, new)
    check_safe(run_dir, changes)
    check_resources(new)
    if changes:
        record_resume(run_dir, step, changes)
    return train_loop(new, run_dir=run_dir, resume=True, progress=say, keep_config=True)


def resume_plan(run_dir: Path, overrides: list[str]) -> tuple[Config, int, dict[str, list]]:
    """The config a resume of `run_dir` runs with, the step it continues from, and the safe changes
    `overrides` make; raises before anything is written when the run has no loadable checkpoint."""
    base = read_run_config(run_dir)
    config, changes = resume_config(run_dir, base, overrides)
    step = int(require_state(run_dir)["step"])
    if config.train.steps < step:
        raise ConfigError(f"train.steps={config.train.steps} is below step {step}, where run {str(run_dir)!r} "
                          "resumes: give train.steps >= that step to continue it")
    return config, step, changes


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
    state = load_checkpoint(checkpoint)
    config = parse_config(state["config"])
    learner = build_learner(config, device)
    params = {k: v.to(learner.device, learner.dtype) for k, v in state["params"].items()}
    return MetaModel(learner, params, int(state["step"]))


def evaluate_checkpoint(checkpoint: str | Path, episodes: int | None = None, steps: int | None = None) -> EvalResult:
    """Meta-test a checkpoint on its config's held-out split."""
    check_count("episodes", episodes)
    check_count("steps", steps, low=0)
    model = load(checkpoint)
    cfg = model.config
    return evaluate(model.learner, model.params, build_distribution(cfg),
                    episodes=episodes if episodes is not None else cfg.eval.episodes,
                    steps=steps if steps is not None else cfg.eval.inner_steps)
