"""Resource checks that turn a run that could never start into an error before anything is written.

A run asking for more than the machine or cluster has used to wait (`runtime.worker_wait_s`) or
start 100000 actors before failing. `check_resources` compares the request with what is there:
for the local backend and an embedded local Ray, before Ray starts (this machine's CPUs and GPUs);
for a Ray cluster, right after connecting (its `ray.cluster_resources()`), before any worker or run
folder exists.
"""

from __future__ import annotations

import math
import os

from metaserve.config import Config, ConfigError

EMBEDDED_OVERSUBSCRIBE = 4  # an embedded local Ray may run up to this many one-CPU workers per core


def check_resources(config: Config) -> None:
    """ConfigError naming the setting that asks for more CPUs or GPUs than there are."""
    import torch

    rc = config.runtime
    if rc.backend == "local" or not _uses_cluster(config):
        if config.train.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={config.train.device!r} but this machine has no CUDA GPU: use auto or cpu")
    if rc.backend != "ray":
        return
    cpus, gpus = rc.num_workers * rc.cpus_per_worker, rc.num_workers * rc.gpus_per_worker
    if not _uses_cluster(config):
        have_cpus, have_gpus = (os.cpu_count() or 1) * EMBEDDED_OVERSUBSCRIBE, torch.cuda.device_count()
        where = f"this machine (an embedded local Ray: {os.cpu_count()} cores x {EMBEDDED_OVERSUBSCRIBE})"
    else:
        import ray

        from metaserve.runtime.cluster import connect

        connect(rc.address)
        total = ray.cluster_resources()
        have_cpus, have_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
        where = f"the Ray cluster ({have_cpus:g} CPUs, {have_gpus:g} GPUs)"
    if gpus > have_gpus:
        raise ConfigError(
            f"runtime.gpus_per_worker={rc.gpus_per_worker:g} x runtime.num_workers={rc.num_workers} "
            f"asks for {gpus:g} GPUs but {where} has {have_gpus:g}: "
            "set runtime.gpus_per_worker=0 or add GPU nodes"
        )
    if cpus > have_cpus + 1e-9:
        most = math.floor(have_cpus / rc.cpus_per_worker)
        raise ConfigError(
            f"runtime.num_workers={rc.num_workers} x runtime.cpus_per_worker={rc.cpus_per_worker:g} "
            f"asks for {cpus:g} CPUs but {where} has {have_cpus:g}: use at most {most} workers"
        )


def _uses_cluster(config: Config) -> bool:
    """True when Ray is already running here or a cluster address is configured."""
    import ray

    return ray.is_initialized() or bool(config.runtime.address or os.environ.get("RAY_ADDRESS"))
