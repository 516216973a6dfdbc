"""Sampling the next meta-step's tasks while a worker waits for the learner.

Between two steps a worker sits idle for the round trip and the learner's outer step (2-4 ms here),
about as long as sampling a sinusoid meta-batch takes. A task is a pure function of (seed, step, index,
space), so the worker can sample step t+1's slice on a thread right after answering step t; the next
call uses it when it asks for that same slice, and samples inline otherwise (after a fault, a changed
slice or a new task space). The result is the same tasks either way.
"""
from __future__ import annotations

import threading
from typing import Sequence

from metaserve.experiment import Learner
from metaserve.runtime.work import sample_slice
from metaserve.tasks.base import Task


class SlicePrefetcher:
    """Holds at most one prefetched slice, keyed by (step, indices, space)."""

    def __init__(self, learner: Learner, distribution):
        self.learner, self.distribution = learner, distribution
        self._key: tuple | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[Task] | None = None

    def tasks(self, step: int, indices: Sequence[int], space) -> list[Task]:
        """The tasks of (step, indices, space): prefetched if they were, else sampled now."""
        key = _key(step, indices, space)
        self._wait()
        tasks = self._tasks if self._key == key and self._tasks is not None else None
        self._key, self._tasks = None, None
        return tasks if tasks is not None else sample_slice(self.learner, self.distribution, step, indices, space)

    def start(self, step: int, indices: Sequence[int], space) -> None:
        """Begin sampling (step, indices, space) in the background."""
        self._wait()
        self._key, self._tasks = _key(step, indices, space), None
        self._thread = threading.Thread(target=self._run, args=(step, list(indices), space), daemon=True)
        self._thread.start()

    def _run(self, step: int, indices: list[int], space) -> None:
        try:
            self._tasks = sample_slice(self.learner, self.distribution, step, indices, space)
        except Exception:  # noqa: BLE001 - the call that needs these tasks samples them again and raises there
            self._tasks = None

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _key(step: int, indices: Sequence[int], space) -> tuple:
    return step, tuple(int(i) for i in indices), repr(space)
