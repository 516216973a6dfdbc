"""The teachers the learner talks to: one small class per `curriculum.teacher`, its state a plain dict.

The learner asks `space(state)` for the task space of the next meta-step, calls `update(state, loss)`
with the meta-validation loss every `curriculum.every` meta-steps (`due`), and stores the state dict
in every checkpoint; `restore` takes it back. The dict holds only str, int, float and lists, so
checkpoints keep loading with `torch.load(..., weights_only=True)`, and the adaptive teacher's noise
is a pure function of (seed, update number), so a resumed run continues exactly.
"""

from __future__ import annotations

import math

import numpy as np

from metaserve.config import Config, CurriculumConfig
from metaserve.curriculum.adaptive import AdaptiveHyper, AdaptiveState, adaptive_init, adaptive_update
from metaserve.curriculum.omega import INTEGER, Omega, Space, apply_omega, omega_columns
from metaserve.curriculum.static import StaticState, static_update
from metaserve.tasks.base import TaskDistribution

CURRICULUM_STREAM = 3  # seed-sequence id of the teacher's draws (task streams use 0..2)


def hyper_from_config(cfg: CurriculumConfig) -> AdaptiveHyper:
    """Per-parameter step (default `curriculum.step`) and noise (default step / 2) of the adaptive teacher."""
    names = tuple(cfg.params)
    steps = tuple(float(p.step if p.step is not None else cfg.step) for p in cfg.params.values())
    noise = tuple(float(p.noise if p.noise is not None else s / 2) for p, s in zip(cfg.params.values(), steps))
    return AdaptiveHyper(
        names,
        tuple(float(p.low) for p in cfg.params.values()),
        tuple(float(p.high) for p in cfg.params.values()),
        steps,
        noise,
        tuple(n in INTEGER for n in names),
        cfg.window,
        cfg.grad_threshold,
        float(cfg.target_loss or 0.0),
    )


class Teacher:
    """The interface, and `teacher: none`: omega stays the distribution's default space.

    The learner asks `space(state)` for the task space of the next meta-step, calls
    `update(state, loss)` every `curriculum.every` meta-steps (`due`) and checkpoints the state.
    """

    kind = "none"

    def __init__(self, cfg: CurriculumConfig, base: Space, seed: int):
        self.cfg, self.base, self.seed = cfg, base, seed

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def due(self, step: int) -> bool:
        """Whether the teacher updates after meta-step `step` (1-based count of steps taken)."""
        return self.active and step % self.cfg.every == 0

    def init(self) -> dict:
        """The state before the first meta-step."""
        return {}

    def restore(self, saved: dict) -> dict:
        """A checkpoint's teacher state; a fresh one when the checkpoint was made under another teacher."""
        if not self.active:
            return {}
        return saved if saved.get("teacher") == self.kind and self.fits(saved) else self.init()

    def fits(self, saved: dict) -> bool:
        """Whether a saved state of this kind belongs to this teacher's settings."""
        return True

    def update(self, state: dict, loss: float) -> dict:
        """The state after observing meta-validation loss `loss` on the current omega."""
        return state

    def omega(self, state: dict) -> Omega:
        """The task-space parameters the student trains on now."""
        return {}

    def space(self, state: dict) -> Space | None:
        """The task space of the next meta-step (None: the distribution's default)."""
        return apply_omega(self.base, self.omega(state)) if self.active else None

    def columns(self, state: dict) -> dict[str, float]:
        """metrics.parquet columns: omega_<name> and the teacher's own (stage or centre)."""
        return omega_columns(self.omega(state)) if self.active else {}

    def last_loss(self, state: dict) -> float:
        """The meta-validation loss of the latest teacher update (nan before the first)."""
        return math.nan

    def candidate_spaces(self) -> list[Space]:
        """Spaces the student may see (each is checked against the data before training)."""
        return []


class StaticTeacher(Teacher):
    """Hand-made stages, easy to hard, advanced past a loss threshold (section IV.A)."""

    kind = "static"

    def __init__(self, cfg: CurriculumConfig, base: Space, seed: int):
        super().__init__(cfg, base, seed)
        self.stages = [dict(s) for s in cfg.stages]
        t = cfg.threshold
        self.thresholds = [float(x) for x in t] if isinstance(t, list) else [float(t)] * (len(self.stages) - 1)

    def init(self) -> dict:
        return {"teacher": "static", **StaticState().to_dict()}

    def fits(self, saved: dict) -> bool:
        return int(saved["stage"]) < len(self.stages)

    def update(self, state: dict, loss: float) -> dict:
        new = static_update(StaticState.from_dict(state), loss, self.thresholds, self.cfg.patience)
        return {"teacher": "static", **new.to_dict()}

    def omega(self, state: dict) -> Omega:
        return dict(self.stages[int(state["stage"])])

    def columns(self, state: dict) -> dict[str, float]:
        return {**super().columns(state), "teacher_stage": float(state["stage"])}

    def last_loss(self, state: dict) -> float:
        return float(state["last_loss"])

    def candidate_spaces(self) -> list[Space]:
        return [apply_omega(self.base, s) for s in self.stages]


class AdaptiveTeacher(Teacher):
    """Algorithm 1 (section IV.B): a perturbed sign step on a finite-difference difficulty gradient."""

    kind = "adaptive"

    def __init__(self, cfg: CurriculumConfig, base: Space, seed: int):
        super().__init__(cfg, base, seed)
        self.hp = hyper_from_config(cfg)
        self.start = tuple(float(p.start if p.start is not None else p.low) for p in cfg.params.values())

    def init(self) -> dict:
        return {
            "teacher": "adaptive",
            "names": list(self.hp.names),
            **adaptive_init(self.start, self._u(0), self.hp).to_dict(),
        }

    def fits(self, saved: dict) -> bool:
        return list(saved.get("names", [])) == list(self.hp.names)

    def update(self, state: dict, loss: float) -> dict:
        s = AdaptiveState.from_dict(state)
        new = adaptive_update(s, loss, self._u(s.updates + 1), self.hp)
        return {"teacher": "adaptive", "names": list(self.hp.names), **new.to_dict()}

    def omega(self, state: dict) -> Omega:
        return dict(zip(self.hp.names, state["omega"]))

    def columns(self, state: dict) -> dict[str, float]:
        return {
            **super().columns(state),
            **{f"teacher_mean_{n}": float(m) for n, m in zip(self.hp.names, state["mean"])},
        }

    def last_loss(self, state: dict) -> float:
        return float(state["history_loss"][-1]) if state["history_loss"] else math.nan

    def candidate_spaces(self) -> list[Space]:
        return [apply_omega(self.base, dict(zip(self.hp.names, corner))) for corner in (self.hp.low, self.hp.high)]

    def _u(self, draw: int) -> list[float]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, CURRICULUM_STREAM, draw]))
        return [float(x) for x in rng.uniform(-1.0, 1.0, size=len(self.hp.names))]


TEACHERS: dict[str, type[Teacher]] = {t.kind: t for t in (Teacher, StaticTeacher, AdaptiveTeacher)}


def make_teacher(cfg: CurriculumConfig, base: Space, seed: int) -> Teacher:
    """The teacher `curriculum.teacher` names, over the default space `base`."""
    return TEACHERS[cfg.teacher](cfg, base, seed)


def build_teacher(config: Config, distribution: TaskDistribution) -> Teacher:
    """The teacher of `config.curriculum`, checked against the data: every space it may pick must be samplable."""
    teacher = make_teacher(config.curriculum, distribution.space, config.seed)
    check = getattr(distribution, "check_space", None)
    if check is not None:
        for space in teacher.candidate_spaces():
            try:
                check(space)
            except ValueError as err:
                raise ValueError(
                    f"curriculum.teacher={teacher.kind!r} may pick {space}, which the data cannot supply: {err}"
                ) from None
    return teacher
