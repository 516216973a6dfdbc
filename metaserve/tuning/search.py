"""A validated Sweep in Ray Tune's terms: search domains, the parameter space, the scheduler.

A trial's config is flat: {"base": name, "<dotted key>": value, ...}; `spec.compose` turns it into
the full metaserve config inside the trial. Flat keys keep results tables and PBT mutations simple.
"""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

from metaserve.config import parse_config
from metaserve.tuning.spec import Domain, Sweep


def to_tune(domain: Domain) -> Any:
    """grid -> grid_search (every value), choice/uniform/loguniform -> sampled per trial."""
    if domain.kind == "grid":
        return tune.grid_search(list(domain.values))
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    if domain.kind == "uniform":
        return tune.uniform(domain.low, domain.high)
    return tune.loguniform(domain.low, domain.high)


def to_mutation(domain: Domain) -> Any:
    """PBT explores a list by moving to a neighbouring value, a range by scaling (x0.8, x1.2) or resampling."""
    return list(domain.values) if domain.kind in ("grid", "choice") else to_tune(domain)


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Tune's param_space: the base (a grid when several) and one entry per searched or mutated key."""
    names = list(sweep.bases)
    space: dict[str, Any] = {"base": tune.grid_search(names) if len(names) > 1 else names[0]}
    space |= {k: to_tune(d) for k, d in sweep.space.items()}
    for key, domain in sweep.mutations.items():  # PBT mutates only keys a trial has: start them in their domain
        space.setdefault(
            key, tune.choice(list(domain.values)) if domain.kind in ("grid", "choice") else to_tune(domain)
        )
    return space


def reports_per_trial(sweep: Sweep) -> int:
    """Reports of a full trial: one per log row (the longest over the bases)."""
    return max(math.ceil(parse_config(b).train.steps / parse_config(b).train.log_every) for b in sweep.bases.values())


def make_scheduler(sweep: Sweep) -> TrialScheduler:
    """fifo, ASHA (Li et al. 2020) or PBT (Jaderberg et al. 2017) over `training_iteration` (reports)."""
    sc = sweep.scheduler
    if sc.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=sc.max_t or reports_per_trial(sweep),
            grace_period=sc.grace_period,
            reduction_factor=sc.reduction_factor,
        )
    if sc.name == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=sc.perturbation_interval,
            hyperparam_mutations={k: to_mutation(d) for k, d in sweep.mutations.items()},
            quantile_fraction=sc.quantile_fraction,
            resample_probability=sc.resample_probability,
            synch=sc.synch,
        )
    return FIFOScheduler()
