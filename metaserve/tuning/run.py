"""Run a sweep on Ray Tune, or resume an interrupted one, and write its results.

A sweep directory `<storage>/<name>-<time>/` holds `sweep.yaml` (the resolved spec, bases inlined:
all a resume needs), `tune/` (Tune's experiment: trials, their run directories and checkpoints),
`results.parquet` and `best_config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from ray import tune

from metaserve.config import ConfigError, read_yaml
from metaserve.store.rundir import unique_dir
from metaserve.tuning.manifest import ManifestSigner, sign, verify
from metaserve.tuning.results import collect, format_table, write_results
from metaserve.tuning.search import make_scheduler, param_space
from metaserve.tuning.spec import Sweep, parse_sweep
from metaserve.tuning.trainable import make_trainable, sweep_trainable

SPEC_FILE = "sweep.yaml"
TUNE_DIR = "tune"


@dataclass
class SweepResult:
    """Where the sweep is, its per-trial table and the files written."""

    sweep_dir: Path
    results: pd.DataFrame
    files: list[Path]
    table: str


def new_sweep_dir(sweep: Sweep) -> Path:
    return unique_dir(Path(sweep.storage), sweep.name).resolve()


def run_sweep(
    sweep: Sweep, *, sweep_dir: Path | None = None, verbose: int = 1, trainable=sweep_trainable
) -> SweepResult:
    """Start every trial of `sweep` and write its results; `trainable(params, bases)` runs one trial."""
    sweep_dir = new_sweep_dir(sweep) if sweep_dir is None else Path(sweep_dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    sign(sweep_dir)  # the manifest exists from the start; ManifestSigner adds Tune's pickles as they are written
    # reuse_actors stays off (Tune's default): in a reused actor get_trial_dir() may still name the
    # previous trial, and a trial's run directory lives there.
    tuner = tune.Tuner(
        make_trainable(sweep.bases, trainable),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            scheduler=make_scheduler(sweep),
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(sweep_dir), verbose=verbose, callbacks=[ManifestSigner(str(sweep_dir))]
        ),
    )
    grid = tuner.fit()
    sign(sweep_dir)
    return _finish(sweep, sweep_dir, grid)


def load_sweep_dir(sweep_dir: Path) -> Sweep:
    """The resolved sweep a sweep directory was started with."""
    path = Path(sweep_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep directory: it has no {SPEC_FILE}")
    return parse_sweep(read_yaml(path, "sweep file"), Path(sweep_dir))


def resume_sweep(sweep_dir: Path, *, verbose: int = 1) -> SweepResult:
    """Continue an interrupted sweep (Tuner.restore): unfinished trials go on, errored ones resume from their
    checkpoints."""
    sweep_dir = Path(sweep_dir).resolve()
    sweep = check_resumable(sweep_dir)
    if not tune.Tuner.can_restore(str(sweep_dir / TUNE_DIR)):
        raise ConfigError(f"{str(sweep_dir)!r} has no Tune experiment state to resume (no {TUNE_DIR}/ written yet)")
    tuner = tune.Tuner.restore(
        str(sweep_dir / TUNE_DIR), make_trainable(sweep.bases), resume_unfinished=True, resume_errored=True
    )
    grid = tuner.fit()
    sign(sweep_dir)
    return _finish(sweep, sweep_dir, grid)


def check_resumable(sweep_dir: Path) -> Sweep:
    """The sweep of `sweep_dir`, once its spec reads and every pickle Tune would load is signed by this user
    (see manifest.py); ConfigError before Ray starts otherwise."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {str(sweep_dir)!r} does not exist")
    sweep = load_sweep_dir(sweep_dir)
    verify(sweep_dir)
    if not (sweep_dir / TUNE_DIR / "tuner.pkl").is_file():
        raise ConfigError(
            f"{str(sweep_dir)!r} has no Tune experiment state to resume (no {TUNE_DIR}/tuner.pkl written yet)"
        )
    return sweep


def _finish(sweep: Sweep, sweep_dir: Path, grid) -> SweepResult:
    df = collect(grid, sweep)
    files = write_results(df, sweep, sweep_dir)
    return SweepResult(sweep_dir, df, files, format_table(df, sweep))
