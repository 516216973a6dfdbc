"""Reaching Ray: a cluster at an address, or an embedded local instance started for this process."""

from __future__ import annotations

import os

import ray

from metaserve.jobs import find_token


def connect(address: str | None = None, num_cpus: int = 1, quiet: bool = False) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded local Ray with at least `num_cpus` CPUs."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        token_mode()
        ray.init(address=address, log_to_driver=True)
        return
    # address="local": never attach to a cluster some other `ray start` left on this machine.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus), include_dashboard=False, log_to_driver=True)
    if not quiet:
        print(
            "Ray: embedded local instance (dashboard off; `ray start --head --dashboard-host 127.0.0.1` then "
            "--address auto serves it at http://127.0.0.1:8265)"
        )


def token_mode() -> None:
    """With a cluster token at hand and RAY_AUTH_MODE unset, connect with token auth (this process only):
    without it Ray retries a token-protected cluster 30 times and then fails with a traceback."""
    if ray.is_initialized() or "RAY_AUTH_MODE" in os.environ:
        return
    token, _source = find_token()
    if token is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
