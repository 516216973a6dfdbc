"""The one typed, validated configuration of a metaserve run.

Every key is checked here, before any data is read or any worker starts; a bad key or value raises
`ConfigError` with a sentence naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from metaserve import registry
from metaserve.registry import AlgorithmEntry


def _no_bool_or_text(value: Any) -> Any:
    # YAML reads `true` as a bool (not 1) and `1e-3` as text (YAML 1.1 floats need a dot): refuse the
    # first, read the second as the number it spells.
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a bool, not a number")
    if isinstance(value, str):
        try:
            return float(value) if not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise ValueError(f"{value!r} is text, not a number") from None
    return value


Number = BeforeValidator(_no_bool_or_text)
PositiveInt = Annotated[int, Number, Field(ge=1)]
PositiveFloat = Annotated[float, Number, Field(gt=0)]
MAX_META_BATCH = 65536  # tasks per outer step; far above any published setting, well below what hangs a machine
DEVICE = r"^(auto|cpu|cuda|cuda:\d+|mps)$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # a run or sweep name: one folder name, never a path
Range = tuple[float, float]


# The URI schemes `pyarrow.fs.FileSystem.from_uri` understands.
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_NEAR_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/?([^/].*)$")  # s3:/bucket, s3:bucket (not C:/dir)


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (a filesystem URI), False for a local path."""
    return bool(_URI.match(str(path)))


def check_output_dir(value: str) -> str:
    """`value` if it is a local path or a URI of a pyarrow filesystem; ValueError naming it otherwise.

    Only the form is checked here (no network), so a config validates offline; the filesystem itself
    is reached when the run starts.
    """
    match = _URI.match(value)
    if match is None:
        near = _NEAR_URI.match(value)
        if near is not None and near.group(1).lower() in SCHEMES:
            raise ValueError(
                f"output_dir={value!r} looks like a {near.group(1)}:// URI with a slash missing; write "
                f"{near.group(1)}://{near.group(2).lstrip('/')} (or a local directory without ':')"
            )
        if Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
            raise ValueError(f"output_dir={value!r} is a file, not a directory: give a directory for the run folders")
        return value
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise ValueError(
            f"output_dir={value!r}: {scheme}:// is not a pyarrow filesystem; use a local directory or one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if not rest.strip("/"):
        raise ValueError(f"output_dir={value!r} names no bucket or directory")
    return value


def cache_root() -> Path:
    """Where metaserve keeps caches (decoded images, staged runs): $METASERVE_CACHE or ~/.cache/metaserve."""
    return Path(os.environ.get("METASERVE_CACHE") or Path.home() / ".cache" / "metaserve").expanduser()


class ConfigError(ValueError):
    """A configuration key or value is not allowed; the message says which and what is."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SinusoidTaskConfig(_Section):
    """Sinusoid regression (Finn et al. 2017) or its phase families (MALTML)."""

    name: Literal["sinusoid", "sinusoid-families"] = "sinusoid"
    shots: PositiveInt = 10  # K support points
    query: PositiveInt = 10  # Q query points
    amplitude: Range = (0.1, 5.0)
    phase: Range = (0.0, math.pi)
    x_range: Range = (-5.0, 5.0)
    tasks_per_family: PositiveInt = 5  # families: L tasks to meta-finetune on per family draw
    goal_tasks: PositiveInt = 1  # families: goal tasks per family draw
    unit: Literal["family", "task"] = (
        "family"  # families: a sample is a whole family, or one task of a family (baselines)
    )
    oracle: bool = False  # inputs (x, amplitude, phase): the oracle baseline of MALTML's sinusoid experiment

    @model_validator(mode="after")
    def _ranges(self) -> SinusoidTaskConfig:
        for key in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, key)
            if not lo <= hi:
                raise ValueError(f"task.{key}={[lo, hi]} is an empty range: need low <= high")
        return self


class SplitConfig(_Section):
    """Which classes form a split: image sources (zips or folders under `root`) and a filter."""

    sources: list[str] = Field(min_length=1)
    alphabets: list[str] | None = None  # omniglot: keep only these alphabets (None = all)
    csv: str | None = None  # image-folder: CSV whose `label` column lists this split's classes


class ImageTaskConfig(_Section):
    """N-way K-shot classification over Omniglot or any `root/<class>/<image>` tree; omniglot-families: families
    = alphabets."""

    name: Literal["omniglot", "image-folder", "omniglot-families"] = "omniglot"
    root: str = "../shared/data/omniglot"
    ways: PositiveInt = 5
    shots: PositiveInt = 1
    query: PositiveInt = 15  # query images per class
    image_size: PositiveInt = 28
    channels: Literal[1, 3] = 1
    rotations: bool = True  # omniglot: x90 degree rotations as new classes (the standard protocol)
    cache_dir: str | None = None  # decoded-image cache (default: ~/.cache/metaserve)
    tasks_per_family: PositiveInt = 5  # omniglot-families: L tasks (N-way within one alphabet) per family draw
    goal_tasks: PositiveInt = 1  # omniglot-families: goal tasks per family draw
    unit: Literal["family", "task"] = "family"  # omniglot-families: a sample is a whole family, or one task of one
    train: SplitConfig = SplitConfig(sources=["images_background_small1.zip"])
    val: SplitConfig | None = None  # None: validation tasks come from the train split, another seed stream
    test: SplitConfig = SplitConfig(
        sources=["images_background_small2.zip"], alphabets=["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    )


class MnistTaskConfig(ImageTaskConfig):
    """N-way K-shot MNIST from the official IDX files in `root`, classes relabelled per task (tasks/mnist.py).

    The train split is the train-* files, the test split the t10k-* files; images are 28x28 grayscale and
    there are 10 classes, so the split, rotation, family and image keys of the other image tasks do not apply.
    """

    name: Literal["mnist"] = "mnist"  # type: ignore[assignment]
    root: str = "../shared/data/mnist"

    @model_validator(mode="after")
    def _mnist(self) -> MnistTaskConfig:
        fixed = sorted(
            self.model_fields_set
            & {"rotations", "train", "val", "test", "tasks_per_family", "goal_tasks", "unit", "cache_dir"}
        )
        if fixed:
            raise ValueError(
                f"task.{fixed[0]} does not apply to task.name='mnist': its train and test splits are "
                "the official train-* and t10k-* IDX files under task.root"
            )
        if self.image_size != 28 or self.channels != 1:
            raise ValueError(
                f"task.image_size={self.image_size}, task.channels={self.channels}: MNIST images are "
                "28x28 grayscale, use image_size 28 and channels 1"
            )
        if self.ways > 10:
            raise ValueError(f"task.ways={self.ways} is not allowed for MNIST, which has 10 classes: use 1..10")
        return self


TaskConfig = Annotated[SinusoidTaskConfig | ImageTaskConfig | MnistTaskConfig, Field(discriminator="name")]


class ModelConfig(_Section):
    """`mlp` (sinusoid regressor) or `conv4` (Finn et al.'s image network)."""

    name: Literal["mlp", "conv4"] = "mlp"
    hidden: list[PositiveInt] | PositiveInt | None = None  # mlp: widths (40, 40); conv4: channels (64)
    # conv4 batch norm during meta-training: queries normalised with their own statistics (transductive,
    # the MAML convention) or with the support set's (support, TaskNorm's non-transductive mode); models/norm.py
    batch_norm: Literal["transductive", "support"] = "transductive"


class OuterSection(_Section):
    """The meta-optimiser: Adam or plain SGD on the batch-mean contribution."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3


class AlgorithmSection(_Section):
    """The base of every algorithm's config section.

    Each algorithm declares its section beside its code and names it in its registry entry
    (metaserve/registry.py); `Config.algorithm` is validated as the section of the named entry.
    """

    name: str
    outer: OuterSection = OuterSection()


class EarlyStopConfig(_Section):
    """Stop when meta-validation has not improved for `patience` log rows; keep the best row's parameters.

    `metric` is a validation column of the algorithm's registry entry (val_acc is maximised, every
    other column, a loss, minimised); a row improves on the best when it beats it by more than
    `min_delta`. With early stopping on, the run's best checkpoint (checkpoints/best.pt) is what the
    final meta-test and `metaserve.load` use.
    """

    metric: str = "val_loss"
    patience: PositiveInt = 5  # log rows without an improvement before the run stops
    min_delta: Annotated[float, Number, Field(ge=0)] = 0.0  # how much a row must beat the best by

    @property
    def maximise(self) -> bool:
        """Accuracy columns are maximised, losses (and MSE) minimised."""
        return self.metric.removesuffix("_pre").endswith("acc")


class TrainConfig(_Section):
    """The meta-training loop."""

    steps: PositiveInt = 1000  # outer steps
    meta_batch: Annotated[PositiveInt, Field(le=MAX_META_BATCH)] = 25  # tasks per outer step
    log_every: PositiveInt = 50  # steps between metric rows and progress lines
    val_tasks: Annotated[int, Field(ge=0)] = 100  # meta-validation tasks per log row (0: none)
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 3
    dtype: Literal["float32", "float64"] = "float32"
    device: Annotated[str, Field(pattern=DEVICE)] = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N", "mps"
    vectorize: Literal["auto", "on", "off"] = "auto"  # vmap over tasks; auto: on, except conv4 on CPU
    # Tasks per block of the fixed-order meta-batch sum (runtime/work.py): one batched call per block and
    # block sums added in order, so every backend and worker count gives the same bits; Ray workers get
    # whole blocks. None: 4 for conv4 (free there), one block per worker for mlp, where a batched call's
    # fixed cost dominates (a block of 4 costs 5x; BENCHMARKS.md) and bits match only at equal worker counts.
    task_block: PositiveInt | None = None
    # Wall-clock seconds of meta-training per invocation (a resume has its own); checked after every step:
    # when spent, the run logs a row, writes its checkpoint and goes on to the meta-test. None: no budget.
    time_budget_s: PositiveFloat | None = None
    early_stop: EarlyStopConfig | None = None  # patience on meta-validation, best checkpoint kept (None: off)

    def block_size(self, model: str) -> int | None:
        """Tasks per block (None: one block per worker's slice)."""
        return self.task_block if self.task_block is not None else (4 if model == "conv4" else None)

    @field_validator("vectorize", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _aligned(self) -> TrainConfig:
        # Checkpoints are taken at log rows, so a resumed run's metrics line up with its parameters.
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"train.checkpoint_every={self.checkpoint_every} must be a multiple of train.log_every={self.log_every}"
            )
        return self


class EvalConfig(_Section):
    """Meta-test evaluation on held-out tasks."""

    episodes: PositiveInt = 600
    inner_steps: PositiveInt | None = None  # default: the algorithm's eval_inner_steps
    curve: bool = True  # the query metrics after every inner step (False: after the last only, one query pass)
    # batch norm at meta-test and in predict: support statistics (non-transductive, each query scored
    # as if alone) or the query set's own statistics (transductive, as in the MAML/Reptile papers)
    batch_norm: Literal["transductive", "support"] = "support"


class RuntimeConfig(_Section):
    """Where the adaptation work runs."""

    backend: Literal["local", "ray"] = "local"
    num_workers: PositiveInt = 2
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    placement_strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = "SPREAD"
    address: str | None = None  # Ray cluster address (None: RAY_ADDRESS or an embedded local Ray)
    worker_wait_s: PositiveFloat = 120.0  # fail when no worker can be had for this long
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # How the learner reaches its workers each step: ordinary actor calls (2-4 ms per round trip here),
    # or a Ray compiled graph (shared-memory channels, ~0.3 ms empty, but idle workers poll a core each):
    # for short steps on machines with a core to spare per worker. BENCHMARKS.md has both measured.
    transport: Literal["calls", "compiled-graph"] = "calls"


SINUSOID_OMEGA = ("amplitude_low", "amplitude_high", "phase_low", "phase_high")  # sinusoid task-space parameters
IMAGE_OMEGA = ("ways", "shots", "query")  # few-shot image task-space parameters (integers)


class OmegaParam(_Section):
    """One task-space parameter the adaptive teacher moves (Shevchuk, "Teaching Your MAML", IV.B)."""

    low: float  # lower bound
    high: float  # upper bound
    start: float | None = None  # where the teacher starts (default: low)
    step: PositiveFloat | None = None  # fixed move per teacher update (default: curriculum.step)
    noise: PositiveFloat | None = None  # half-width of the uniform perturbation (default: step / 2)

    @model_validator(mode="after")
    def _bounds(self) -> OmegaParam:
        if not self.low <= self.high:
            raise ValueError(f"low={self.low} > high={self.high}: need low <= high")
        if self.start is not None and not self.low <= self.start <= self.high:
            raise ValueError(f"start={self.start} is outside [low, high] = [{self.low}, {self.high}]")
        return self


class CurriculumConfig(_Section):
    """The teacher that moves the task space omega between meta-steps (Shevchuk, "Teaching Your MAML")."""

    teacher: Literal["none", "static", "adaptive"] = "none"
    every: PositiveInt = 4  # teacher update rate (Table I): meta-steps between teacher updates
    val_tasks: PositiveInt = 20  # meta-validation tasks (the same ones every update) behind each update
    stages: list[dict[str, float]] = Field(default_factory=list)  # static: omega of each stage, easy to hard
    threshold: float | list[float] | None = None  # static: val loss to stay below (one, or one per stage transition)
    patience: PositiveInt = 2  # static: consecutive updates below the threshold before advancing
    params: dict[str, OmegaParam] = Field(default_factory=dict)  # adaptive: the parameters it moves
    step: PositiveFloat = 2.0  # adaptive: teacher gradient step (Table I), the fixed move per update
    window: PositiveInt = 3  # adaptive: teacher steps the finite-difference gradient spans
    grad_threshold: Annotated[float, Field(ge=0)] = 0.0  # adaptive: move only where |gradient estimate| exceeds it
    target_loss: PositiveFloat | None = (
        None  # adaptive: val loss below it = over-performing (harder tasks), above = easier
    )


def _check_curriculum(c: CurriculumConfig, task: Any, spec: AlgorithmEntry) -> None:
    """Raise ValueError naming the curriculum key, its value and what is allowed for this task."""
    if c.teacher == "none":
        return
    image = isinstance(task, ImageTaskConfig)
    allowed = IMAGE_OMEGA if image else SINUSOID_OMEGA
    if c.teacher == "static":
        if not c.stages:
            raise ValueError(
                "curriculum.teacher='static' needs curriculum.stages: a list of task-space settings, easy to hard"
            )
        if c.threshold is None:
            raise ValueError(
                "curriculum.teacher='static' needs curriculum.threshold: the meta-validation loss to stay below"
            )
        if isinstance(c.threshold, list) and len(c.threshold) != len(c.stages) - 1:
            raise ValueError(
                f"curriculum.threshold has {len(c.threshold)} values for {len(c.stages)} stages: "
                f"give one number, or one per stage transition ({len(c.stages) - 1})"
            )
        corners = [(f"curriculum.stages[{i}]", dict(s)) for i, s in enumerate(c.stages)]
    else:
        if not c.params:
            raise ValueError(
                "curriculum.teacher='adaptive' needs curriculum.params: the task-space parameters to move, with bounds"
            )
        if c.target_loss is None:
            raise ValueError(
                "curriculum.teacher='adaptive' needs curriculum.target_loss: the meta-validation loss that "
                "separates over-performing (harder tasks) from under-performing (easier tasks)"
            )
        for name, p in c.params.items():
            noise = p.noise if p.noise is not None else (p.step if p.step is not None else c.step) / 2
            if image and name in allowed and (any(v != int(v) for v in (p.low, p.high, p.start or p.low)) or noise < 1):
                raise ValueError(
                    f"curriculum.params.{name}={p.model_dump()} moves an integer: low, high and start must be "
                    f"integers and the noise (here {noise}) at least 1, or rounding removes the perturbation"
                )
        # the smallest highs against the largest lows: every omega in the bounds must be a valid space
        corners = [
            ("curriculum.params (lows)", {n: p.low for n, p in c.params.items()}),
            ("curriculum.params (highs)", {n: p.high for n, p in c.params.items()}),
            (
                "curriculum.params (narrowest)",
                {n: (p.high if n.endswith("_low") else p.low) for n, p in c.params.items()},
            ),
        ]
    for where, omega in corners:
        unknown = sorted(set(omega) - set(allowed))
        if unknown:
            raise ValueError(
                f"{where.split(' ')[0]} names {unknown}, which task.name={task.name!r} does not have; "
                f"allowed: {', '.join(allowed)}"
            )
        if image:
            if "ways" in omega and spec.fixed_ways:
                raise ValueError(
                    f"{where} moves 'ways' but algorithm.name={spec.name!r} is built for task.ways classes: "
                    "keep ways fixed (move shots or query), or use a gradient-based algorithm"
                )
            for name, v in omega.items():
                if v != int(v) or v < 1:
                    raise ValueError(f"{where}.{name}={v} is not allowed: need an integer >= 1")
            if omega.get("ways", 1) > task.ways:
                raise ValueError(
                    f"{where}.ways={omega['ways']} exceeds task.ways={task.ways}, the size of the classifier "
                    "head: a curriculum may lower the ways (labels stay < task.ways) but not raise them"
                )
        else:
            for key in ("amplitude", "phase"):
                lo, hi = omega.get(f"{key}_low", getattr(task, key)[0]), omega.get(f"{key}_high", getattr(task, key)[1])
                if not lo <= hi:
                    raise ValueError(
                        f"{where} gives {key} range [{lo}, {hi}], which is empty: need {key}_low <= {key}_high"
                    )


def task_kind(task: Any) -> str:
    """'classification' for image tasks, 'regression' for sinusoid ones."""
    return "classification" if isinstance(task, ImageTaskConfig) else "regression"


def parse_algorithm(data: Any) -> AlgorithmSection:
    """The section of the registry entry `data['name']` names (default maml), validated; ConfigError otherwise."""
    if isinstance(data, AlgorithmSection):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"algorithm={data!r} must be a section of keys, e.g. {{name: maml, inner_lr: 0.01}}")
    name = data.get("name", "maml")
    try:
        spec = registry.entry(name)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    try:
        return spec.config.model_validate({**data, "name": name})
    except ValidationError as err:
        raise ConfigError("\n  ".join(_lines(err, spec.config, "algorithm."))) from None


class Config(_Section):
    """A whole run: what to learn from, with what, how, and where."""

    name: Annotated[str, Field(pattern=NAME, max_length=200)] = "run"  # the run folder is <output_dir>/<name>-<time>
    seed: Annotated[int, Number] = 0
    output_dir: str = "runs"
    task: TaskConfig = SinusoidTaskConfig()
    model: ModelConfig = ModelConfig()
    algorithm: SerializeAsAny[AlgorithmSection] = Field(default_factory=lambda: parse_algorithm({}))
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    curriculum: CurriculumConfig = CurriculumConfig()

    @property
    def entry(self) -> AlgorithmEntry:
        """The registry entry of `algorithm.name`."""
        return registry.entry(self.algorithm.name)

    @model_validator(mode="before")
    @classmethod
    def _default_task(cls, data: Any) -> Any:
        # A task section given without its `name` takes the default one, as a section left out does.
        if isinstance(data, dict) and isinstance(data.get("task"), dict) and "name" not in data["task"]:
            data = {**data, "task": {"name": "sinusoid", **data["task"]}}
        return data

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm(cls, value: Any) -> AlgorithmSection:
        try:
            return parse_algorithm(value)
        except ConfigError as err:
            raise PydanticCustomError("algorithm_section", "{message}", {"message": str(err)}) from None

    @field_validator("output_dir")
    @classmethod
    def _storage(cls, value: str) -> str:
        return check_output_dir(value)  # a path, or s3://, gs://, ... (form only, no network)

    @model_validator(mode="after")
    def _compatible(self) -> Config:
        image = isinstance(self.task, ImageTaskConfig)
        wanted = "conv4" if image else "mlp"
        if self.model.name != wanted:
            raise ValueError(
                f"model.name={self.model.name!r} does not fit task.name={self.task.name!r}: use {wanted!r}"
            )
        spec, kind = self.entry, task_kind(self.task)
        if kind not in spec.tasks:
            raise ValueError(
                f"algorithm.name={spec.name!r} needs a {' or '.join(spec.tasks)} task, not task.name={self.task.name!r}"
            )
        _check_families(self.task, spec)
        _check_early_stop(self.train, kind, spec)
        _check_curriculum(self.curriculum, self.task, spec)
        return self


def _check_early_stop(train: TrainConfig, kind: str, spec: AlgorithmEntry) -> None:
    """The stopping metric must be a validation column this algorithm reports, and validation must run."""
    stop = train.early_stop
    if stop is None:
        return
    allowed = sorted(f"val_{m}" for m in spec.eval_metrics(kind))
    if stop.metric not in allowed:
        raise ValueError(
            f"train.early_stop.metric={stop.metric!r} is not a validation column of algorithm.name={spec.name!r} "
            f"on a {kind} task: use one of {', '.join(allowed)}"
        )
    if train.val_tasks == 0:
        raise ValueError("train.early_stop needs meta-validation at log rows: set train.val_tasks >= 1, not 0")


def _check_families(task: Any, spec: AlgorithmEntry) -> None:
    """Family learners need whole families; every other learner one task per sample."""
    families = task.name in ("sinusoid-families", "omniglot-families")
    if spec.learns_from == "families":
        if not families:
            raise ValueError(
                f"algorithm.name={spec.name!r} learns from task families: use task.name='sinusoid-families' "
                f"or 'omniglot-families', not {task.name!r}"
            )
        if task.unit != "family":
            raise ValueError(
                f"algorithm.name={spec.name!r} learns from whole families: set task.unit='family', not {task.unit!r}"
            )
    elif families and task.unit == "family":
        raise ValueError(
            f"algorithm.name={spec.name!r} learns from single tasks: with task.name={task.name!r} set "
            "task.unit='task' (one task per family draw, the baseline that ignores families)"
        )


def _lines(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per error: the dotted key (tags of tagged unions left out), its value and what is allowed."""
    lines = []
    for e in err.errors():
        if e["type"] == "algorithm_section":  # already formatted by parse_algorithm
            lines.append(str(e["ctx"]["message"]))
            continue
        where = prefix + ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _TASK_TAGS))
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{where}'; known keys here: {', '.join(_known_keys(model, e['loc']))}")
        elif e["type"] == "missing":
            lines.append(f"config key '{where}' is missing: it is required here")
        elif e["type"] == "string_pattern_mismatch" and where.split(".")[-1] in _PATTERNS:
            lines.append(f"{where}={e.get('input')!r} is not allowed: {_PATTERNS[where.split('.')[-1]]}")
        elif not where.strip("."):
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{where}={e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}")
    return lines


def _format(err: ValidationError, model: type[BaseModel]) -> str:
    return "invalid config:\n  " + "\n  ".join(_lines(err, model))


def _tags(union: Any) -> dict[str, type[BaseModel]]:
    """Tag -> section of a tagged union, read off each member's `name` literal."""
    members = get_args(get_args(union)[0])
    return {tag: m for m in members for tag in get_args(m.model_fields["name"].annotation)}


_TASK_TAGS = _tags(TaskConfig)
_PATTERNS = {
    "device": "use auto, cpu, cuda, cuda:N or mps",
    "name": "use letters, digits, '.', '_', '+' and '-' (one folder name, not a path)",
}


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The allowed keys at the parent of `loc` (following tagged unions by their tag)."""
    section: Any = model
    dict_key = False  # the next part is a key of a dict of sections (curriculum.params.<name>)
    for part in loc[:-1]:
        if dict_key:
            dict_key = False
            continue
        if isinstance(part, str) and part in _TASK_TAGS:
            section = _TASK_TAGS[part]
            continue
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        ann = field.annotation
        if get_origin(ann) is dict and isinstance(get_args(ann)[1], type) and issubclass(get_args(ann)[1], BaseModel):
            section, dict_key = get_args(ann)[1], True
            continue
        section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else section
    return sorted(section.model_fields)


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a plain dict into a Config, or raise ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, Config)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested dict, returning a copy."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        out = set_dotted(out, key, parse_value(item, raw))
    return out


def parse_value(item: str, raw: str) -> Any:
    """The YAML value of an override; ConfigError naming `item` when it is not valid YAML."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r} has a value that is not valid YAML ({_yaml_problem(err)})") from None


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The parsed YAML of `path`; ConfigError naming the file and the line of a syntax error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not a text file") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or type(err).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested `data` with `a.b.c` set to `value` (sections created as needed)."""
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # a section left out, or an optional one that is off (train.early_stop: null)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"key {key!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = read_yaml(path)
    if data is None:
        raise ConfigError(
            f"config file {str(path)!r} is empty: give at least the task, model and algorithm sections (see configs/)"
        )
    return parse_config(apply_overrides(data, overrides or []))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain, YAML-safe dict of the whole config (tuples as lists)."""
    return config.model_dump(mode="json")
