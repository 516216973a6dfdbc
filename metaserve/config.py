"""The one typed, validated configuration of a metaserve run.

Every key is checked here, before any data is read or any worker starts; a bad key or value raises
`ConfigError` with a sentence naming the key, the value and what is allowed.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Range = tuple[float, float]


class ConfigError(ValueError):
    """A configuration key or value is not allowed; the message says which and what is."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    unit: Literal["family", "task"] = "family"  # families: a sample is a whole family, or one task of a family (baselines)
    oracle: bool = False  # inputs (x, amplitude, phase): the oracle baseline of MALTML's sinusoid experiment

    @model_validator(mode="after")
    def _ranges(self) -> "SinusoidTaskConfig":
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
    """N-way K-shot classification over Omniglot or any `root/<class>/<image>` tree; omniglot-families: families = alphabets."""

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


TaskConfig = Annotated[Union[SinusoidTaskConfig, ImageTaskConfig], Field(discriminator="name")]


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


class GradientAlgorithmConfig(_Section):
    """maml (second order), fomaml, reptile."""

    name: Literal["maml", "fomaml", "reptile"] = "maml"
    inner_lr: PositiveFloat = 0.01  # alpha
    inner_steps: PositiveInt = 1  # k during meta-training
    eval_inner_steps: PositiveInt | None = None  # k at meta-test (default: inner_steps)
    outer: OuterSection = OuterSection()


class LazyAlgorithmConfig(GradientAlgorithmConfig):
    """lazy-maml / lazy-reptile (Jamal, Wang & Gong 2021): student k steps, teacher leap gamma."""

    name: Literal["lazy-maml", "lazy-reptile"] = "lazy-maml"  # type: ignore[assignment]
    leap: Annotated[float, Field(gt=0, le=1)] = 1.0  # gamma
    leap_target: Literal["last", "mean"] = "last"


class ProtoNetConfig(_Section):
    """Prototypical networks (metric-based; no inner loop)."""

    name: Literal["protonet"] = "protonet"
    outer: OuterSection = OuterSection()


class MatchingConfig(_Section):
    """Matching networks (Vinyals et al. 2016): cosine attention over support embeddings."""

    name: Literal["matching"] = "matching"
    fce: bool = False  # full-context embeddings (appendix A.2): bidirectional LSTM over the support, attention LSTM for queries
    fce_steps: PositiveInt = 2  # fce: processing steps K of the attention LSTM
    outer: OuterSection = OuterSection()


class MetricConfig(_Section):
    """relation (Sung et al. 2018) or siamese (Koch et al. 2015): a learned comparison of embeddings."""

    name: Literal["relation", "siamese"] = "relation"
    outer: OuterSection = OuterSection()


class PretrainConfig(_Section):
    """Joint training on all tasks, then SGD finetuning at meta-test (MALTML's pretraining baseline)."""

    name: Literal["pretrain"] = "pretrain"
    inner_lr: PositiveFloat = 0.01  # finetuning step at meta-test
    eval_inner_steps: PositiveInt = 10  # finetuning steps at meta-test
    outer: OuterSection = OuterSection()


class MALTML2ndConfig(_Section):
    """maltml-2nd: MALTML's Algorithm 1 with single steps, differentiated through both levels."""

    name: Literal["maltml-2nd"] = "maltml-2nd"
    task_lr: PositiveFloat = 0.01  # alpha: SGD on a task's K examples
    meta_lr: PositiveFloat = 0.01  # beta: meta-step over the family's L tasks (their Q examples)
    finetune_lr: PositiveFloat = 0.01  # gamma: SGD on the goal task's K examples
    finetune_steps: PositiveInt = 10  # goal finetuning steps at meta-test (training takes one)
    outer: OuterSection = OuterSection()


class MALTMLConfig(MALTML2ndConfig):
    """maltml (first order): m meta-steps (fomaml or reptile) on each family's L tasks; contribution theta'_j - theta."""

    name: Literal["maltml"] = "maltml"  # type: ignore[assignment]
    meta_learner: Literal["fomaml", "reptile"] = "fomaml"  # the first-order meta-step taken on the family
    task_steps: PositiveInt = 1  # SGD steps per task inside a meta-step
    meta_steps: Annotated[int, Field(ge=2)] = 5  # m > 1 meta-steps per family (one would be a plain first-order step)


AlgorithmConfig = Annotated[
    Union[GradientAlgorithmConfig, LazyAlgorithmConfig, ProtoNetConfig, MatchingConfig, MetricConfig, PretrainConfig,
          MALTMLConfig, MALTML2ndConfig],
    Field(discriminator="name"),
]
METRIC_LEARNERS = ("protonet", "matching", "relation", "siamese")  # classification only, no inner loop
FAMILY_LEARNERS = ("maltml", "maltml-2nd")  # learn from whole task families


class TrainConfig(_Section):
    """The meta-training loop."""

    steps: PositiveInt = 1000  # outer steps
    meta_batch: PositiveInt = 25  # tasks per outer step
    log_every: PositiveInt = 50  # steps between metric rows and progress lines
    val_tasks: Annotated[int, Field(ge=0)] = 100  # meta-validation tasks per log row (0: none)
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 3
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    vectorize: Literal["auto", "on", "off"] = "auto"  # vmap over tasks; auto: on, except conv4 on CPU

    @field_validator("vectorize", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML reads a bare on/off as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _aligned(self) -> "TrainConfig":
        # Checkpoints are taken at log rows, so a resumed run's metrics line up with its parameters.
        if self.checkpoint_every % self.log_every:
            raise ValueError(f"train.checkpoint_every={self.checkpoint_every} must be a multiple of train.log_every={self.log_every}")
        return self


class EvalConfig(_Section):
    """Meta-test evaluation on held-out tasks."""

    episodes: PositiveInt = 600
    inner_steps: PositiveInt | None = None  # default: the algorithm's eval_inner_steps
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
    def _bounds(self) -> "OmegaParam":
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
    target_loss: PositiveFloat | None = None  # adaptive: val loss below it = over-performing (harder tasks), above = easier


def _check_curriculum(c: CurriculumConfig, task: Any, algorithm: str) -> None:
    """Raise ValueError naming the curriculum key, its value and what is allowed for this task."""
    if c.teacher == "none":
        return
    image = isinstance(task, ImageTaskConfig)
    allowed = IMAGE_OMEGA if image else SINUSOID_OMEGA
    if c.teacher == "static":
        if not c.stages:
            raise ValueError("curriculum.teacher='static' needs curriculum.stages: a list of task-space settings, easy to hard")
        if c.threshold is None:
            raise ValueError("curriculum.teacher='static' needs curriculum.threshold: the meta-validation loss to stay below")
        if isinstance(c.threshold, list) and len(c.threshold) != len(c.stages) - 1:
            raise ValueError(f"curriculum.threshold has {len(c.threshold)} values for {len(c.stages)} stages: "
                             f"give one number, or one per stage transition ({len(c.stages) - 1})")
        corners = [(f"curriculum.stages[{i}]", dict(s)) for i, s in enumerate(c.stages)]
    else:
        if not c.params:
            raise ValueError("curriculum.teacher='adaptive' needs curriculum.params: the task-space parameters to move, with bounds")
        if c.target_loss is None:
            raise ValueError("curriculum.teacher='adaptive' needs curriculum.target_loss: the meta-validation loss that "
                             "separates over-performing (harder tasks) from under-performing (easier tasks)")
        for name, p in c.params.items():
            noise = p.noise if p.noise is not None else (p.step if p.step is not None else c.step) / 2
            if image and name in allowed and (any(v != int(v) for v in (p.low, p.high, p.start or p.low)) or noise < 1):
                raise ValueError(f"curriculum.params.{name}={p.model_dump()} moves an integer: low, high and start must be "
                                 f"integers and the noise (here {noise}) at least 1, or rounding removes the perturbation")
        # the smallest highs against the largest lows: every omega in the bounds must be a valid space
        corners = [("curriculum.params (lows)", {n: p.low for n, p in c.params.items()}),
                   ("curriculum.params (highs)", {n: p.high for n, p in c.params.items()}),
                   ("curriculum.params (narrowest)", {n: (p.high if n.endswith("_low") else p.low) for n, p in c.params.items()})]
    for where, omega in corners:
        unknown = sorted(set(omega) - set(allowed))
        if unknown:
            raise ValueError(f"{where.split(' ')[0]} names {unknown}, which task.name={task.name!r} does not have; "
                             f"allowed: {', '.join(allowed)}")
        if image:
            if "ways" in omega and algorithm == "protonet":
                raise ValueError(f"{where} moves 'ways' but algorithm.name='protonet' builds prototypes for task.ways classes: "
                                 "keep ways fixed (move shots or query), or use a gradient-based algorithm")
            for name, v in omega.items():
                if v != int(v) or v < 1:
                    raise ValueError(f"{where}.{name}={v} is not allowed: need an integer >= 1")
            if omega.get("ways", 1) > task.ways:
                raise ValueError(f"{where}.ways={omega['ways']} exceeds task.ways={task.ways}, the size of the classifier "
                                 "head: a curriculum may lower the ways (labels stay < task.ways) but not raise them")
        else:
            for key in ("amplitude", "phase"):
                lo, hi = omega.get(f"{key}_low", getattr(task, key)[0]), omega.get(f"{key}_high", getattr(task, key)[1])
                if not lo <= hi:
                    raise ValueError(f"{where} gives {key} range [{lo}, {hi}], which is empty: need {key}_low <= {key}_high")


class Config(_Section):
    """A whole run: what to learn from, with what, how, and where."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    task: TaskConfig = SinusoidTaskConfig()
    model: ModelConfig = ModelConfig()
    algorithm: AlgorithmConfig = GradientAlgorithmConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    curriculum: CurriculumConfig = CurriculumConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_tags(cls, data: Any) -> Any:
        # A section given without its `name` takes the default one, as a section left out does.
        if isinstance(data, dict):
            data = dict(data)
            for key, tag in (("task", "sinusoid"), ("algorithm", "maml")):
                if isinstance(data.get(key), dict) and "name" not in data[key]:
                    data[key] = {"name": tag, **data[key]}
        return data

    @model_validator(mode="after")
    def _storage(self) -> "Config":
        from metaserve.store.storage import check_output_dir  # a path, or s3://, gs://, ... (form only, no network)

        check_output_dir(self.output_dir)
        return self

    @model_validator(mode="after")
    def _compatible(self) -> "Config":
        image = isinstance(self.task, ImageTaskConfig)
        wanted = "conv4" if image else "mlp"
        if self.model.name != wanted:
            raise ValueError(f"model.name={self.model.name!r} does not fit task.name={self.task.name!r}: use {wanted!r}")
        if self.algorithm.name in METRIC_LEARNERS and not image:
            raise ValueError(f"algorithm.name={self.algorithm.name!r} needs a classification task, not task.name={self.task.name!r}")
        _check_families(self.task, self.algorithm.name)
        _check_curriculum(self.curriculum, self.task, self.algorithm.name)
        return self


def _check_families(task: Any, algorithm: str) -> None:
    """Family learners need whole families; every other learner one task per sample."""
    families = task.name in ("sinusoid-families", "omniglot-families")
    if algorithm in FAMILY_LEARNERS:
        if not families:
            raise ValueError(f"algorithm.name={algorithm!r} learns from task families: use task.name='sinusoid-families' "
                             f"or 'omniglot-families', not {task.name!r}")
        if task.unit != "family":
            raise ValueError(f"algorithm.name={algorithm!r} learns from whole families: set task.unit='family', not {task.unit!r}")
    elif families and task.unit == "family":
        raise ValueError(f"algorithm.name={algorithm!r} learns from single tasks: with task.name={task.name!r} set "
                         "task.unit='task' (one task per family draw, the baseline that ignores families)")


def _format(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _TAGS)) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{where}'; known keys here: {', '.join(_known_keys(model, e['loc']))}")
        elif where == "<root>":
            lines.append(e["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{where}={e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}")
    return "invalid config:\n  " + "\n  ".join(lines)


_TAGS = {"sinusoid", "sinusoid-families", "omniglot", "image-folder", "maml", "fomaml", "reptile", "lazy-maml", "lazy-reptile", "protonet",
         "omniglot-families", "matching", "relation", "siamese", "pretrain", "maltml", "maltml-2nd"}


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The allowed keys at the parent of `loc` (following tagged unions by their tag)."""
    section: Any = model
    dict_key = False  # the next part is a key of a dict of sections (curriculum.params.<name>)
    for part in loc[:-1]:
        if dict_key:
            dict_key = False
            continue
        if isinstance(part, str) and part in _TAGS:
            section = _TAG_MODELS[part]
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


_TAG_MODELS: dict[str, type[BaseModel]] = {
    "sinusoid": SinusoidTaskConfig, "sinusoid-families": SinusoidTaskConfig,
    "omniglot": ImageTaskConfig, "image-folder": ImageTaskConfig,
    "maml": GradientAlgorithmConfig, "fomaml": GradientAlgorithmConfig, "reptile": GradientAlgorithmConfig,
    "lazy-maml": LazyAlgorithmConfig, "lazy-reptile": LazyAlgorithmConfig, "protonet": ProtoNetConfig,
    "omniglot-families": ImageTaskConfig, "matching": MatchingConfig, "relation": MetricConfig, "siamese": MetricConfig,
    "pretrain": PretrainConfig, "maltml": MALTMLConfig, "maltml-2nd": MALTML2ndConfig,
}


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
        out = set_dotted(out, key, yaml.safe_load(raw))
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested `data` with `a.b.c` set to `value` (sections created as needed)."""
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"key {key!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    return parse_config(apply_overrides(data, overrides or []))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain, YAML-safe dict of the whole config (tuples as lists)."""
    return config.model_dump(mode="json")
