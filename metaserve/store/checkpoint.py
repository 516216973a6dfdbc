"""Atomic checkpoints that resume a run exactly.

A checkpoint is `checkpoints/<step>/state.pt`, holding only tensors and plain Python values, so it
loads with `torch.load(..., weights_only=True)`. It is written into a temporary directory and renamed
into place, so a crash mid-write never leaves a checkpoint that loads wrong; a damaged one found
later is skipped, with a warning, for the previous good one. A run with early stopping also keeps
`checkpoints/best.pt` (the best validation row's parameters, written the same atomic way), which is
what loading the run directory gives; resuming always continues from the newest step checkpoint.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"  # checkpoints/best.pt: the best meta-validation row's parameters (early stopping)
REQUIRED = ("params", "outer_state", "step", "config")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `step` atomically, then prune to the newest `keep`."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:08d}"
    tmp = root / f".tmp-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def best_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / BEST_FILE


def save_best(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` as the run's best checkpoint atomically (a temporary file renamed over best.pt)."""
    final = best_path(run_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{BEST_FILE}-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint (a state.pt file or its directory); raises ValueError if it is damaged."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"checkpoint {str(path)!r} has no {STATE_FILE}")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # PyTorch's message advises weights_only=False, which could run code
        raise ValueError(
            f"checkpoint {str(file)!r} is damaged or holds more than tensors and plain values "
            "(refused: loading such objects could run code)"
        ) from err
    except Exception as err:  # truncated or corrupt files raise a variety of errors
        raise ValueError(f"checkpoint {str(file)!r} is damaged or truncated ({type(err).__name__})") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(file)!r} is not a metaserve checkpoint (a {type(state).__name__})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(file)!r} lacks {missing}")
    return state


def latest_good_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint that loads, skipping damaged ones with a warning; None if none exist."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_state(path, map_location)
        except ValueError as err:
            warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=2)
    return None


def require_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The newest checkpoint of `run_dir` that loads; ValueError listing what was found when none does."""
    found, problems = list_checkpoints(run_dir), []
    for path in reversed(found):
        try:
            return load_state(path, map_location)
        except ValueError as err:
            problems.append(f"{path.name} ({str(err).split(' is ', 1)[-1].split(' has ', 1)[-1]})")
    none = f"found no {checkpoint_dir(run_dir).name}/<step>/{STATE_FILE}"
    what = "found " + ", ".join(problems) if problems else none
    raise ValueError(
        f"run {str(run_dir)!r} has no loadable checkpoint to resume from: {what}; "
        "--restart starts it over in a new run folder"
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A state.pt (or best.pt) file, a checkpoints/<step> directory, or a run directory's checkpoint: its
    best one when the run kept one (early stopping), else its newest good one."""
    path = Path(path)
    if path.is_file() or (path / STATE_FILE).is_file():
        return load_state(path, map_location)
    if best_path(path).is_file():
        return load_state(best_path(path), map_location)
    state = latest_good_state(path, map_location)
    if state is None:
        raise FileNotFoundError(
            f"no loadable checkpoint at {str(path)!r}: give a run directory, a checkpoints/<step> "
            "directory or a state.pt file"
        )
    return state
