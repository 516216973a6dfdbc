"""Hyperparameter and curriculum sweeps on Ray Tune (`metaserve tune SWEEP.yaml`).

spec.py (parse and validate a sweep spec) -> search.py (Tune domains, param space, fifo/asha/pbt)
-> trainable.py (one trial: compose its config, run the learner) -> run.py (run or resume; writes
results.py's results.parquet, best_config.yaml and table).
"""

from metaserve.tuning.spec import Sweep, load_sweep, parse_sweep, reported_metrics

_RUN = ("run_sweep", "resume_sweep", "load_sweep_dir", "SweepResult")


def __getattr__(name: str):
    # run.py imports Ray Tune; validating a spec (and failing on a bad one) should not wait for it.
    if name in _RUN:
        from metaserve.tuning import run

        return getattr(run, name)
    raise AttributeError(f"module 'metaserve.tuning' has no attribute {name!r}")


__all__ = ["Sweep", "load_sweep", "parse_sweep", "reported_metrics", *_RUN]
