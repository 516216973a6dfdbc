"""The Python API: `train`, `load` (a MetaModel for few-shot use) and `evaluate_checkpoint`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaserve.config import Config, ConfigError, ImageTaskConfig, load_config, parse_config
from metaserve.errors import check_count
from metaserve.evaluation import EvalResult, adapt_to, evaluate, meta_test_record
from metaserve.experiment import Learner, build_distribution, build_learner
from metaserve.inputs import as_tensor, check_head, class_labels, examples, targets
from metaserve.models.functional import Params
from metaserve.models.norm import Stats, check_mode
from metaserve.preflight import check_resources
from metaserve.runtime.loop import TrainResult, train_loop
from metaserve.store.checkpoint import load_checkpoint, require_state
from metaserve.store.resume import changed_keys, check_safe, record_resume, resume_config
from metaserve.store.rundir import read_run_config
from metaserve.tasks.transform import ImageTransform, image_transform


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


def train(
    config: Config | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    progress: Callable[[str], None] | bool | None = None,
) -> TrainResult:
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
        raise ConfigError(
            f"train.steps={config.train.steps} is below step {step}, where run {str(run_dir)!r} "
            "resumes: give train.steps >= that step to continue it"
        )
    return config, step, changes


@dataclass
class AdaptedModel:
    """A model adapted to one task's support set.

    `ways` classes (logit i is label i, or `classes[i]` when `adapt` mapped labels); `stats` are the
    support set's batch-norm statistics, which normalise every query in the "support" mode.
    """

    learner: Learner
    params: Params
    ways: int | None = None
    classes: list | None = None
    norm: str = "support"
    stats: Stats | None = None
    example: tuple[int, ...] = ()

    @torch.no_grad()
    def predict(self, x: Any) -> Tensor:
        """Regression outputs [n, 1], or class logits [n, ways], for n inputs shaped like the support inputs.

        In the "support" batch-norm mode (the default) each row depends only on the support set and
        on that input, whatever else is in `x`; in "transductive" mode x is normalised with its own
        batch statistics, so rows depend on each other (the papers' transductive protocol). Accepts
        tensors, numpy arrays and lists; a 1-D [n] is read as n one-feature inputs for a 1-input MLP.
        """
        x = examples(x, self.example, "query_x", families=_families(self.learner))
        x = x.to(self.learner.device, self.learner.dtype)
        out = self.learner.algorithm.predict(self.params, x, self.stats if self.norm == "support" else None)
        return (
            out[..., : self.ways] if self.ways is not None and self.learner.algorithm.head_classes is not None else out
        )


@dataclass
class MetaModel:
    """Meta-learned parameters plus the algorithm that adapts them: the few-shot API."""

    learner: Learner
    params: Params
    step: int

    @property
    def config(self) -> Config:
        return self.learner.config

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one input: (channels, size, size) for images, (features,) for regression."""
        task = self.config.task
        if isinstance(task, ImageTaskConfig):
            return (task.channels, task.image_size, task.image_size)
        return (3 if getattr(task, "oracle", False) else 1,)

    @property
    def transform(self) -> dict[str, Any]:
        """What `preprocess` does to an image, and how to undo it (image runs only)."""
        return self._transform().describe()

    def _transform(self) -> ImageTransform:
        if not isinstance(self.config.task, ImageTaskConfig):
            raise ValueError(
                f"preprocess is for image models; this run's task is {self.config.task.name!r}, "
                "whose inputs go to adapt/predict as numbers"
            )
        return image_transform(self.config.task)

    def preprocess(self, images: Any) -> Tensor:
        """Image files, PIL images or uint8 arrays -> [n, C, H, W] floats, transformed exactly as this run's
        training images (PIL mode, Lanczos resize, Omniglot's inversion, v / 255); see `transform`."""
        return self._transform()(images).to(self.learner.device, self.learner.dtype)

    def adapt(
        self,
        support_x: Any,
        support_y: Any,
        steps: int | None = None,
        *,
        classes: Sequence[Hashable] | None = None,
        norm: str | None = None,
    ) -> AdaptedModel:
        """Adapt to a support set (`steps` inner steps; default: the algorithm's eval_inner_steps).

        support_x: [n, *example_shape] (tensor, array or list). Classification: support_y holds n
        labels 0..N-1 with every class present, or any labels listed in `classes` (logit i is then
        classes[i]). Metric learners (protonet, matching, relation, siamese) take any N; a model with
        a classifier head takes N up to its outputs (N below it: the logits of the first N classes).
        `norm`: "support" (default: eval.batch_norm) or "transductive" (models/norm.py).
        """
        algorithm, dev, dt = self.learner.algorithm, self.learner.device, self.learner.dtype
        norm = check_mode(norm or self.config.eval.batch_norm)
        x = examples(support_x, self.example_shape, "support_x", families=_families(self.learner))
        ways = None
        if x.dim() == len(self.example_shape) + 2:  # a family draw (maltml): targets per task, passed on as given
            y = as_tensor(support_y, "support_y")
            y = y.to(dev, dt) if y.is_floating_point() else y.to(dev)
        elif algorithm.kind == "classification":
            labels, ways = class_labels(support_y, x.shape[0], classes)
            check_head(ways, algorithm.head_classes, self.config.algorithm.name)
            y = labels.to(dev)
        else:
            y = targets(support_y, x.shape[0]).to(dev, dt)
        x = x.to(dev, dt)
        adapted = adapt_to(algorithm, self.params, x, y, steps, ways)
        stats = algorithm.norm_stats(adapted, x) if norm == "support" else None
        return AdaptedModel(
            self.learner, adapted, ways, list(classes) if classes is not None else None, norm, stats, self.example_shape
        )


def _families(learner: Learner) -> bool:
    """Whether the algorithm adapts to a family's stacked tasks (maltml)."""
    return learner.config.entry.learns_from == "families"


def load(checkpoint: str | Path, device: str | None = None) -> MetaModel:
    """A MetaModel from a run directory (latest checkpoint), a checkpoint directory or a state.pt."""
    state = load_checkpoint(checkpoint)
    config = parse_config(state["config"])
    learner = build_learner(config, device)
    params = {k: v.to(learner.device, learner.dtype) for k, v in state["params"].items()}
    return MetaModel(learner, params, int(state["step"]))


def evaluate_checkpoint(
    checkpoint: str | Path,
    episodes: int | None = None,
    steps: int | None = None,
    *,
    overrides: list[str] | None = None,
    norm: str | None = None,
) -> EvalResult:
    """Meta-test a checkpoint on its config's held-out split.

    `overrides` (e.g. ["task.ways=20", "task.test.alphabets=[Tagalog]"]) change the test tasks only:
    ways, shots, query size, the test split; the model stays the trained one. `norm` defaults to the
    config's eval.batch_norm. The result carries `record` (batch-norm modes, train/test class overlap,
    warned about), the fields test.json holds.
    """
    check_count("episodes", episodes)
    check_count("steps", steps, low=0)
    model = load(checkpoint)
    cfg = model.config
    test_cfg = as_config(cfg, overrides) if overrides else cfg
    norm = check_mode(norm or test_cfg.eval.batch_norm)
    if isinstance(test_cfg.task, ImageTaskConfig):  # before any data is read
        check_head(test_cfg.task.ways, model.learner.algorithm.head_classes, cfg.algorithm.name)
    distribution = build_distribution(test_cfg)
    result = evaluate(
        model.learner,
        model.params,
        distribution,
        episodes=episodes if episodes is not None else test_cfg.eval.episodes,
        steps=steps if steps is not None else test_cfg.eval.inner_steps,
        norm=norm,
    )
    result.record = {**meta_test_record(test_cfg, distribution), "batch_norm": norm}
    return result
