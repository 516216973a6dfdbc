"""What a resumed run may change, and the record of what it did change.

A resumed run keeps its config: `config.yaml` is never rewritten. Only the keys in `SAFE_ON_RESUME`
may be given again on resume; they say how long to train (steps, or seconds per invocation), how
hard to test, and where the work runs (a run's parameters are the same on every backend and worker
count), never what is learned. Each resume that changes one appends a line to `resume.jsonl`
({"time", "step", "changes": {key: [old, new]}}), and `read_run_config` replays those lines over
`config.yaml`, so the run's effective config is always config.yaml plus its recorded train.steps,
train.time_budget_s and eval.episodes (runtime.* changes are recorded too, but hold for that resume
only: where the next one runs is its own choice).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from metaserve.config import Config, ConfigError, apply_overrides, config_to_dict, parse_config, set_dotted

RESUME_LOG = "resume.jsonl"
SAFE_ON_RESUME = (
    "train.steps",
    "train.time_budget_s",
    "eval.episodes",
    "runtime.backend",
    "runtime.address",
    "runtime.num_workers",
    "runtime.cpus_per_worker",
    "runtime.gpus_per_worker",
    "runtime.placement_strategy",
    "runtime.worker_wait_s",
    "runtime.transport",
)
REPLAYED = (
    "train.steps",
    "train.time_budget_s",
    "eval.episodes",
)  # kept by later resumes; runtime.* changes hold for that resume only


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(old: Config, new: Config) -> dict[str, list]:
    """{dotted key: [old value, new value]} for every key whose value differs."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_safe(run_dir: Path, changes: dict[str, list]) -> None:
    """ConfigError naming the first key a resume may not change, with the keys it may."""
    unsafe = [k for k in changes if k not in SAFE_ON_RESUME]
    if unsafe:
        key = unsafe[0]
        raise ConfigError(
            f"{key}={changes[key][1]!r} cannot be changed on resume (run {str(run_dir)!r} has "
            f"{key}={changes[key][0]!r}): a resumed run keeps its config; only "
            f"{', '.join(SAFE_ON_RESUME)} "
            "may change, or use --restart for a new run with a new config"
        )


def resume_config(run_dir: Path, base: Config, overrides: list[str]) -> tuple[Config, dict[str, list]]:
    """The run's config with the safe `overrides` applied, and what they change; ConfigError for any other key."""
    for item in overrides:
        key = item.partition("=")[0]
        if key not in SAFE_ON_RESUME:
            raise ConfigError(
                f"--set {item!r} is refused on resume: a resumed run keeps its config; only "
                f"{', '.join(SAFE_ON_RESUME)} may change (or use --restart for a new run)"
            )
    new = parse_config(apply_overrides(config_to_dict(base), overrides))
    changes = changed_keys(base, new)
    check_safe(run_dir, changes)
    return new, changes


def record_resume(run_dir: Path, step: int, changes: dict[str, list]) -> None:
    """Append this resume (its step and any config changes) to `resume.jsonl`."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "changes": changes}
    with open(Path(run_dir) / RESUME_LOG, "a") as f:
        f.write(json.dumps(line) + "\n")


def replay_changes(run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (config.yaml's dict) with every change recorded in `resume.jsonl` applied in order."""
    path = Path(run_dir) / RESUME_LOG
    if not path.is_file():
        return data
    for n, text in enumerate(path.read_text().splitlines(), 1):
        try:
            changes = json.loads(text)["changes"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{str(path)!r} line {n} is not a resume record; it was not written by metaserve"
            ) from None
        for key, (_old, new) in changes.items():
            if key not in SAFE_ON_RESUME:
                raise ConfigError(f"{str(path)!r} line {n} changes {key!r}, which a resume may not change")
            if key in REPLAYED:
                data = set_dotted(data, key, new)
    return data
