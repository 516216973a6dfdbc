"""Creating and reading run directories."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from metaserve.config import Config, ConfigError, config_to_dict, parse_config, read_yaml
from metaserve.store.storage import local_root

CONFIG_FILE = "config.yaml"


def unique_dir(parent: Path, name: str) -> Path:
    """A new, empty `parent/<name>-<timestamp>[-n]` directory."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def new_run_dir(config: Config) -> Path:
    """`<output_dir>/<name>-<timestamp>/`, made unique, with the whole config saved in it."""
    root = local_root(config.output_dir)  # staged if a URI
    if not (root / config.name).resolve().is_relative_to(root.resolve()):  # config.py allows no separators; keep it so
        raise ConfigError(f"name={config.name!r} would place the run outside output_dir={config.output_dir!r}")
    return init_run_dir(unique_dir(root, config.name), config)


def init_run_dir(path: Path, config: Config) -> Path:
    """Create `path` (if needed) and save the whole config in it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path


def read_run_config(run_dir: Path) -> Config:
    """The config a run directory was made with, plus the changes its resumes recorded (see resume.py)."""
    from metaserve.store.resume import replay_changes

    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory: it has no {CONFIG_FILE}")
    data = read_yaml(path, "run config")
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} is not a run config (a mapping of keys to values)")
    return parse_config(replay_changes(run_dir, data))
