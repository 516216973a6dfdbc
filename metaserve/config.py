"""The one typed, validated configuration of a metaserve run.

Every key is checked here, before any data is read or any worker starts; a bad key or value raises
`ConfigError` with a sentence naming the key, the value and what is allowed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    tasks_per_family: PositiveInt = 5  # sinusoid-families only

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
    """N-way K-shot classification over Omniglot or any `root/<class>/<image>` tree."""

    name: Literal["omniglot", "image-folder"] = "omniglot"
    root: str = "../shared/data/omniglot"
    ways: PositiveInt = 5
    shots: PositiveInt = 1
    query: PositiveInt = 15  # query images per class
    image_size: PositiveInt = 28
    channels: Literal[1, 3] = 1
    rotations: bool = True  # omniglot: x90 degree rotations as new classes (the standard protocol)
    cache_dir: str | None = None  # decoded-image cache (default: ~/.cache/metaserve)
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


AlgorithmConfig = Annotated[
    Union[GradientAlgorithmConfig, LazyAlgorithmConfig, ProtoNetConfig], Field(discriminator="name")
]


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
    def _compatible(self) -> "Config":
        image = isinstance(self.task, ImageTaskConfig)
        wanted = "conv4" if image else "mlp"
        if self.model.name != wanted:
            raise ValueError(f"model.name={self.model.name!r} does not fit task.name={self.task.name!r}: use {wanted!r}")
        if self.algorithm.name == "protonet" and not image:
            raise ValueError(f"algorithm.name='protonet' needs a classification task, not task.name={self.task.name!r}")
        return self


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


_TAGS = {"sinusoid", "sinusoid-families", "omniglot", "image-folder", "maml", "fomaml", "reptile", "lazy-maml", "lazy-reptile", "protonet"}


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The allowed keys at the parent of `loc` (following tagged unions by their tag)."""
    section: Any = model
    for part in loc[:-1]:
        if isinstance(part, str) and part in _TAGS:
            section = _TAG_MODELS[part]
            continue
        field = section.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        ann = field.annotation
        section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else section
    return sorted(section.model_fields)


_TAG_MODELS: dict[str, type[BaseModel]] = {
    "sinusoid": SinusoidTaskConfig, "sinusoid-families": SinusoidTaskConfig,
    "omniglot": ImageTaskConfig, "image-folder": ImageTaskConfig,
    "maml": GradientAlgorithmConfig, "fomaml": GradientAlgorithmConfig, "reptile": GradientAlgorithmConfig,
    "lazy-maml": LazyAlgorithmConfig, "lazy-reptile": LazyAlgorithmConfig, "protonet": ProtoNetConfig,
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
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
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
