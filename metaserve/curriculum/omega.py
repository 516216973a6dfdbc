"""omega: the task-space parameters a curriculum teacher moves, as a flat dict of named numbers.

Sinusoid (Finn et al. 2017): `amplitude_low`/`amplitude_high` and `phase_low`/`phase_high`, the ranges
A and phi are drawn from. Few-shot images: `ways`, `shots`, `query` (integers). A teacher works on the
dict; `apply_omega` turns it into the distribution's frozen space dataclass, which the executor
forwards to every worker with the meta-step.
"""

from __future__ import annotations

import math
from dataclasses import replace

from metaserve.config import IMAGE_OMEGA, SINUSOID_OMEGA
from metaserve.tasks.images import ImageSpace
from metaserve.tasks.sinusoid import SinusoidSpace

Space = SinusoidSpace | ImageSpace
Omega = dict[str, float]
INTEGER = frozenset(IMAGE_OMEGA)  # counts: the teacher rounds them before building a space


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (Python's round() rounds halves to even)."""
    return int(math.floor(x + 0.5))


def omega_of(space: Space) -> Omega:
    """Every teachable parameter of a space, by name."""
    if isinstance(space, SinusoidSpace):
        return {
            "amplitude_low": space.amplitude[0],
            "amplitude_high": space.amplitude[1],
            "phase_low": space.phase[0],
            "phase_high": space.phase[1],
        }
    if isinstance(space, ImageSpace):
        return {name: float(getattr(space, name)) for name in IMAGE_OMEGA}
    raise TypeError(f"no task-space parameters known for {type(space).__name__}")


def apply_omega(space: Space, omega: Omega) -> Space:
    """`space` with the parameters named in `omega` replaced (the others keep their values)."""
    if isinstance(space, SinusoidSpace):
        _known(omega, SINUSOID_OMEGA)
        amplitude = (omega.get("amplitude_low", space.amplitude[0]), omega.get("amplitude_high", space.amplitude[1]))
        phase = (omega.get("phase_low", space.phase[0]), omega.get("phase_high", space.phase[1]))
        return replace(space, amplitude=tuple(map(float, amplitude)), phase=tuple(map(float, phase)))
    if isinstance(space, ImageSpace):
        _known(omega, IMAGE_OMEGA)
        return replace(space, **{k: round_half_up(v) for k, v in omega.items()})
    raise TypeError(f"no task-space parameters known for {type(space).__name__}")


def omega_columns(omega: Omega) -> dict[str, float]:
    """metrics.parquet columns of an omega: `omega_<name>`."""
    return {f"omega_{k}": float(v) for k, v in omega.items()}


def _known(omega: Omega, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(omega) - set(allowed))
    if unknown:
        raise ValueError(f"task-space parameters {unknown} are not known here; allowed: {', '.join(allowed)}")
