"""Shared fixtures: one embedded Ray instance for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch intra-op thread for the whole session: on 2 shared cores a second thread only
    spin-waits, making these small ops 10-40x slower and their timings erratic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(tmp_path_factory):
    """Sweep manifests are signed with a key made for the session, never the user's ~/.config/metaserve/key."""
    os.environ["METASERVE_KEY_FILE"] = str(tmp_path_factory.mktemp("key") / "key")
    yield Path(os.environ["METASERVE_KEY_FILE"])


@pytest.fixture(scope="session")
def ray_session():
    """An embedded local Ray (4 logical CPUs so 3 one-CPU workers fit on a 2-core machine)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def bare_learner(algorithm, name: str, dtype=None):
    """A Learner around a hand-built algorithm: its config only names the registry entry (the evaluation protocol)."""
    import torch

    from metaserve.config import parse_config
    from metaserve.experiment import Learner

    task = {"classification": {"name": "omniglot"}, "regression": {"name": "sinusoid"}}[algorithm.kind]
    if name in ("maltml", "maltml-2nd"):
        task = {"name": "sinusoid-families"}
    model = "conv4" if algorithm.kind == "classification" else "mlp"
    config = parse_config({"task": task, "model": {"name": model}, "algorithm": {"name": name}})
    return Learner(config, algorithm, torch.device("cpu"), dtype or torch.float64)
