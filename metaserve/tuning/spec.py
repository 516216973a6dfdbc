"""A sweep spec (`metaserve tune SWEEP.yaml`), validated completely before any trial starts.

A spec names one or more base configs, a search space over dotted config keys (grid, choice,
uniform, loguniform), the metric and mode, a scheduler (fifo, asha, pbt; PBT mutations use the same
domain syntax), samples and concurrency. `load_sweep` resolves the bases into full config dicts and
checks: unknown spec keys, an empty space or domain, config keys or values no trial could use
(every candidate value is validated as a config), a metric the trials never report, and PBT
perturbations that fall between checkpoints. The resolved `Sweep` is what a sweep directory stores.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metaserve.config import (
    NAME,
    Config,
    ConfigError,
    ImageTaskConfig,
    apply_overrides,
    parse_config,
    parse_value,
    read_yaml,
    set_dotted,
    task_kind,
)
from metaserve.curriculum.teacher import make_teacher
from metaserve.tasks.images import ImageSpace
from metaserve.tasks.sinusoid import SinusoidSpace

DOMAINS = ("grid", "choice", "uniform", "loguniform")
TUNE_METRICS = {"training_iteration", "time_total_s", "time_this_iter_s"}  # added by Tune to every report


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseEntry(_Spec):
    """One base config: a YAML path (relative to the spec file) and overrides applied to it."""

    config: str
    set: list[str] = Field(default_factory=list)


class SchedulerSpec(_Spec):
    """fifo (run everything), asha (stop weak trials early), pbt (exploit good checkpoints, explore mutations)."""

    name: Literal["fifo", "asha", "pbt"] = "fifo"
    max_t: Annotated[int, Field(ge=1)] | None = None  # asha: reports per trial at most (default: a full run's)
    grace_period: Annotated[int, Field(ge=1)] = 1  # asha: reports before a trial may be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0  # asha
    perturbation_interval: Annotated[int, Field(ge=1)] | None = None  # pbt: reports (log rows) between exploits
    mutations: dict[str, dict[str, Any]] = Field(default_factory=dict)  # pbt: dotted key -> domain
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.25  # pbt: bottom fraction that exploits the top
    resample_probability: Annotated[float, Field(ge=0, le=1)] = 0.25  # pbt
    synch: bool = True  # pbt: perturb all trials at the same report (reproducible with few trials)


class SweepSpec(_Spec):
    """The YAML file as written."""

    name: Annotated[str, Field(pattern=NAME, max_length=200)]  # the sweep folder is <storage>/<name>-<time>
    base: str | dict[str, str | BaseEntry]  # one config path, or named bases (each a path or {config, set})
    set: list[str] = Field(default_factory=list)  # overrides applied to every base
    space: dict[str, dict[str, Any]]  # dotted config key -> {grid|choice|uniform|loguniform: ...}
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    scheduler: SchedulerSpec = SchedulerSpec()
    num_samples: Annotated[int, Field(ge=1)] = 1  # samples of the space (each grid point this many times)
    max_concurrent: Annotated[int, Field(ge=1)] | None = None  # trials at once (None: as many as resources allow)
    storage: str = "runs/sweeps"  # sweep directories go under it


@dataclass(frozen=True)
class Domain:
    """A search dimension: `values` for grid/choice, (low, high) for uniform/loguniform."""

    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def candidates(self) -> list:
        """Values to validate as configs: every listed value, or both ends of a range."""
        return list(self.values) if self.kind in ("grid", "choice") else [self.low, self.high]

    def to_dict(self) -> dict:
        return {self.kind: list(self.values) if self.kind in ("grid", "choice") else [self.low, self.high]}


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: full base config dicts by name, parsed domains, and the run settings."""

    name: str
    bases: dict[str, dict]
    space: dict[str, Domain]
    metric: str
    mode: str
    scheduler: SchedulerSpec
    num_samples: int = 1
    max_concurrent: int | None = None
    storage: str = "runs/sweeps"
    mutations: dict[str, Domain] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The self-contained spec a sweep directory stores (bases inlined): `load_sweep` reads it back."""
        return {
            "name": self.name,
            "base": {n: {"inline": b} for n, b in self.bases.items()},
            "space": {k: d.to_dict() for k, d in self.space.items()},
            "metric": self.metric,
            "mode": self.mode,
            "scheduler": self.scheduler.model_dump(mode="json", exclude_unset=True),
            "num_samples": self.num_samples,
            "max_concurrent": self.max_concurrent,
            "storage": self.storage,
        }


def parse_domain(key: str, raw: Any) -> Domain:
    """{grid: [..]} | {choice: [..]} | {uniform: [low, high]} | {loguniform: [low, high]}."""
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DOMAINS:
        raise ConfigError(
            f"space key {key!r}: {raw!r} is not a domain; write one of "
            f"{{grid: [v1, v2]}}, {{choice: [v1, v2]}}, {{uniform: [low, high]}}, {{loguniform: [low, high]}}"
        )
    kind, value = next(iter(raw.items()))
    if kind in ("grid", "choice"):
        if not isinstance(value, list) or not value:
            raise ConfigError(f"space key {key!r}: {kind}={value!r} is empty; give a non-empty list of values")
        return Domain(kind, tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise ConfigError(f"space key {key!r}: {kind}={value!r} must be [low, high]")
    low, high = float(value[0]), float(value[1])
    if not low < high or (kind == "loguniform" and low <= 0):
        need = "0 < low < high" if kind == "loguniform" else "low < high"
        raise ConfigError(f"space key {key!r}: {kind}=[{low}, {high}] is an empty range; need {need}")
    return Domain(kind, low=low, high=high)


def compose(bases: dict[str, dict], params: dict[str, Any]) -> dict:
    """A trial's config dict: its base (`params['base']`) with every dotted key of `params` set."""
    data = bases[params["base"]]
    for key, value in params.items():
        if key != "base":
            data = set_dotted(data, key, value)
    return data


def reported_metrics(config: Config) -> set[str]:
    """Every metric a trial of `config` reports to Tune (the learner's log rows, the final test result)."""
    image = isinstance(config.task, ImageTaskConfig)
    spec, kind = config.entry, task_kind(config.task)
    names = spec.metrics(kind) | {
        "step",
        "worker_time",
        "comm_time",
        "learner_time",
        "step_time",
        "tasks_per_s",
        "done_training",
        "start_step",
    }
    if config.train.val_tasks:
        names |= {f"val_{m}" for m in spec.eval_metrics(kind)}
    test = "acc" if image else "mse"
    names |= {f"test_{test}", f"test_{test}_ci95"}
    teacher = make_teacher(config.curriculum, ImageSpace() if image else SinusoidSpace(), config.seed)
    if teacher.active:
        names |= set(teacher.columns(teacher.init())) | {"teacher_loss"}
    return names | TUNE_METRICS


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read, resolve and validate a sweep spec; raises ConfigError before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {str(path)!r} does not exist")
    raw = read_yaml(path, "sweep spec")
    if raw is None:
        raise ConfigError(f"sweep spec {str(path)!r} is empty: give at least name, base and space (see tuning/)")
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep spec {str(path)!r} must be a mapping of keys to values, not a {type(raw).__name__}")
    plain = [o for o in overrides or [] if not o.startswith(DOTTED_MAPS)]
    raw = apply_overrides(raw, plain)
    for item in overrides or []:
        if item.startswith(DOTTED_MAPS):  # space.algorithm.inner_lr={...}: one dotted config key, not nested sections
            raw = _set_dotted_map(raw, item)
    return parse_sweep(raw, path.parent)


DOTTED_MAPS = ("space.", "scheduler.mutations.")  # spec sections whose keys are dotted config keys


def _set_dotted_map(raw: dict, item: str) -> dict:
    """`raw` with `space.<config key>=<domain>` (or a PBT mutation) set under the whole dotted config key."""
    key, sep, value = item.partition("=")
    prefix = next(p for p in DOTTED_MAPS if key.startswith(p))
    if not sep or key == prefix:
        raise ConfigError(f"override {item!r} is not of the form {prefix}<config key>={{grid: [v1, v2]}}")
    section = prefix.rstrip(".")
    data = set_dotted(raw, section, {}) if not isinstance(_get_dotted(raw, section), dict) else dict(raw)
    mapping = dict(_get_dotted(data, section))
    mapping[key[len(prefix) :]] = parse_value(item, value)
    return set_dotted(data, section, mapping)


def _get_dotted(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def parse_sweep(raw: dict, root: Path) -> Sweep:
    """Validate a spec dict (paths relative to `root`)."""
    if not isinstance(raw, dict):
        raise ConfigError("a sweep spec must be a mapping of keys to values")
    base = raw.get("base")
    inline = isinstance(base, dict) and all(isinstance(v, dict) and set(v) == {"inline"} for v in base.values())
    try:
        spec = SweepSpec.model_validate({**raw, "base": "<inline>"} if inline else raw)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None
    bases = {n: v["inline"] for n, v in base.items()} if inline else _resolve_bases(spec, root)
    if not spec.space:
        raise ConfigError(
            "space is empty: give at least one dotted config key with a domain, e.g. "
            "algorithm.inner_lr: {loguniform: [0.001, 0.1]}"
        )
    space = {k: parse_domain(k, v) for k, v in spec.space.items()}
    mutations = {k: parse_domain(k, v) for k, v in spec.scheduler.mutations.items()}
    _check_scheduler(spec.scheduler)
    configs = {name: _probe(name, data, {**space, **mutations}) for name, data in bases.items()}
    for name, config in configs.items():
        reported = reported_metrics(config)
        if spec.metric not in reported:
            raise ConfigError(
                f"metric {spec.metric!r} is never reported by trials of base {name!r}; "
                f"reported metrics: {', '.join(sorted(reported))}"
            )
    check_metric_mode(spec.metric, spec.mode, spec.scheduler.name)
    for name, data in bases.items():
        check_schedule(spec.scheduler, name, data, space)
    return Sweep(
        spec.name,
        bases,
        space,
        spec.metric,
        spec.mode,
        spec.scheduler,
        spec.num_samples,
        spec.max_concurrent,
        spec.storage,
        mutations,
    )


FINAL_ONLY = ("test_", "done_training")  # metrics only the last report of a trial carries


def metric_direction(metric: str) -> str | None:
    """'max' for accuracies, 'min' for losses and MSEs, None where no direction is implied (times, omega, CI widths)."""
    if metric.endswith("_ci95"):
        return None
    stem = metric.removesuffix("_pre")
    if stem.endswith("acc"):
        return "max"
    return "min" if stem.endswith(("loss", "mse")) else None


def check_metric_mode(metric: str, mode: str, scheduler: str) -> None:
    """Reject a mode that would select the worst trial, and a metric an early-stopping scheduler never sees in time."""
    want = metric_direction(metric)
    if want is not None and mode != want:
        kind = "an accuracy (higher is better)" if want == "max" else "a loss (lower is better)"
        raise ConfigError(
            f"mode={mode!r} with metric {metric!r} would select the worst trial: it is {kind}, so set mode: {want}"
        )
    if scheduler != "fifo" and metric.startswith(FINAL_ONLY):
        raise ConfigError(
            f"metric {metric!r} is reported only by a trial's last report, but "
            f"scheduler.name={scheduler!r} compares trials at every report; use a per-row metric "
            "such as val_loss, or scheduler.name=fifo"
        )


def trial_reports(data: dict, space: dict[str, Domain]) -> tuple[int, int]:
    """(fewest, most) Tune reports a trial of this base makes: one per log row, ceil(steps / log_every).

    Searched `train.steps` / `train.log_every` values count: every combination of their candidates.
    """
    train = parse_config(data).train
    steps = [int(v) for v in space["train.steps"].candidates()] if "train.steps" in space else [train.steps]
    every = [int(v) for v in space["train.log_every"].candidates()] if "train.log_every" in space else [train.log_every]
    counts = [math.ceil(s / e) for s in steps for e in every]
    return min(counts), max(counts)


def check_schedule(sc: SchedulerSpec, name: str, data: dict, space: dict[str, Domain]) -> None:
    """The scheduler's settings against the reports a trial of base `name` makes and its checkpoint cadence.

    Ray Tune counts `training_iteration` (one report per log row): ASHA needs grace_period <= max_t <=
    the reports a trial makes (else Ray asserts once trials run, or its top rungs are never reached);
    PBT needs a perturbation before a trial's last report, landing on a checkpoint.
    """
    train = parse_config(data).train
    fewest, most = trial_reports(data, space)
    rows = (
        f"train.steps={train.steps} with train.log_every={train.log_every} gives {fewest} report(s) per trial "
        f"of base {name!r}"
    )
    if sc.name == "asha":
        max_t = sc.max_t or most
        if sc.grace_period > min(max_t, fewest):
            raise ConfigError(
                f"scheduler.grace_period={sc.grace_period} exceeds the reports a trial makes: {rows}"
                f"{f' (scheduler.max_t={sc.max_t})' if sc.max_t else ''}; lower grace_period to at most "
                f"{min(max_t, fewest)}, or raise train.steps / lower train.log_every"
            )
        if sc.max_t is not None and sc.max_t > most:
            raise ConfigError(
                f"scheduler.max_t={sc.max_t} exceeds the reports a trial makes: {rows}, so ASHA's "
                "top rungs are never reached; drop max_t (default: a full run's reports) or set it "
                f"to at most {most}"
            )
    if sc.name == "pbt":
        if sc.perturbation_interval >= fewest:
            raise ConfigError(
                f"scheduler.perturbation_interval={sc.perturbation_interval} reports is not below the "
                f"reports a trial makes: {rows}, so PBT would never exploit or explore; "
                f"set it below {fewest}"
            )
        span = sc.perturbation_interval * train.log_every
        if span % train.checkpoint_every:
            raise ConfigError(
                f"scheduler.perturbation_interval={sc.perturbation_interval} reports of base "
                f"{name!r} are {span} steps, not a multiple of "
                f"train.checkpoint_every={train.checkpoint_every}: PBT "
                "exploits checkpoints, so set checkpoint_every to log_every or align the interval"
            )


def _resolve_bases(spec: SweepSpec, root: Path) -> dict[str, dict]:
    entries = (
        {Path(spec.base).stem: BaseEntry(config=spec.base)}
        if isinstance(spec.base, str)
        else {n: (BaseEntry(config=e) if isinstance(e, str) else e) for n, e in spec.base.items()}
    )
    if not entries:
        raise ConfigError("base is empty: give a config path, or named bases {name: path}")
    out = {}
    for name, entry in entries.items():
        candidates = (
            [Path(entry.config)]
            if Path(entry.config).is_absolute()
            else [root / entry.config, Path.cwd() / entry.config]
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"base {name!r}: config {entry.config!r} not found (looked for {', '.join(map(str, candidates))})"
            )
        data = apply_overrides(read_yaml(found) or {}, entry.set + spec.set)
        try:
            parse_config(data)
        except ConfigError as err:
            raise ConfigError(f"base {name!r} ({found}): {err}") from None
        out[name] = data
    return out


def _probe(name: str, base: dict, space: dict[str, Domain]) -> Config:
    """Validate every candidate value of every key as a config of this base (all combinations when few)."""
    keys = list(space)
    choices = [space[k].candidates() for k in keys]
    combos = (
        list(itertools.product(*choices))
        if _product_size(choices) <= 512
        else [tuple(c[0] if j != i else v for j, c in enumerate(choices)) for i in range(len(keys)) for v in choices[i]]
    )
    for combo in combos:
        data = base
        for key, value in zip(keys, combo):
            data = set_dotted(data, key, value)
        try:
            parse_config(data)
        except ConfigError as err:
            setting = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo))
            raise ConfigError(f"base {name!r} with {setting} is not a valid config: {err}") from None
    return parse_config(base)


def _product_size(choices: list[list]) -> int:
    n = 1
    for c in choices:
        n *= len(c)
    return n


def _check_scheduler(sc: SchedulerSpec) -> None:
    given = sc.model_fields_set
    only = {
        "asha": {"max_t", "grace_period", "reduction_factor"},
        "pbt": {"perturbation_interval", "mutations", "quantile_fraction", "resample_probability", "synch"},
    }
    for name, keys in only.items():
        stray = sorted((given & keys) - (keys if sc.name == name else set()))
        if stray:
            raise ConfigError(f"scheduler.{stray[0]} applies to scheduler.name={name!r}, not {sc.name!r}")
    if sc.name == "pbt":
        if sc.perturbation_interval is None:
            raise ConfigError(
                "scheduler.name='pbt' needs scheduler.perturbation_interval (reports between exploit/explore)"
            )
        if not sc.mutations:
            raise ConfigError(
                "scheduler.name='pbt' needs scheduler.mutations: dotted config keys with the domains PBT explores"
            )


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<spec>"
        if e["type"] == "extra_forbidden":
            parent = SchedulerSpec if e["loc"][0] == "scheduler" else SweepSpec
            lines.append(f"unknown sweep key {where!r}; known keys here: {', '.join(sorted(parent.model_fields))}")
        elif e["loc"][:1] == ("base",) and e["type"] in ("string_type", "dict_type"):
            lines.append(
                f"base={e.get('input')!r}: give a config path, "
                "or named bases {name: path | {config: path, set: [...]}}"
            )
        elif e["type"] == "missing":
            lines.append(f"sweep key {where!r} is required")
        else:
            lines.append(f"{where}={e.get('input')!r}: {e['msg']}")
    return "invalid sweep spec:\n  " + "\n  ".join(dict.fromkeys(lines))
