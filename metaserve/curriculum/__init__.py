"""Curriculum teachers (Shevchuk, "Teaching Your MAML"): they own the task-space parameters omega and
move them between meta-steps from the student's meta-validation loss.

`none` keeps omega fixed, `static` walks hand-made stages (section IV.A), `adaptive` follows
Algorithm 1 (section IV.B). The maths are pure functions in `static.py` and `adaptive.py`;
`teacher.py` wires them to the learner with the state as a plain dict.
"""

from metaserve.curriculum.adaptive import (
    AdaptiveHyper,
    AdaptiveState,
    adaptive_init,
    adaptive_update,
    difficulty_gradient,
    perturb,
    sign_step,
)
from metaserve.curriculum.omega import apply_omega, omega_columns, omega_of
from metaserve.curriculum.static import StaticState, static_update
from metaserve.curriculum.teacher import AdaptiveTeacher, StaticTeacher, Teacher, build_teacher, make_teacher

__all__ = [
    "Teacher",
    "StaticTeacher",
    "AdaptiveTeacher",
    "build_teacher",
    "make_teacher",
    "StaticState",
    "static_update",
    "AdaptiveHyper",
    "AdaptiveState",
    "adaptive_init",
    "adaptive_update",
    "difficulty_gradient",
    "sign_step",
    "perturb",
    "apply_omega",
    "omega_of",
    "omega_columns",
]
