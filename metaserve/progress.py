"""Progress of training, meta-test and report: a live bar on a terminal, plain lines elsewhere.

A `Progress` is a plain message callback (`progress("loading data")` prints a line, which is what
`train_loop(progress=print)` always took) that can also follow a counted phase:
`progress.start("meta-train", total)`, `progress.advance(i)`, `progress.finish()`. On a terminal the
phase is one redrawn line, `meta-train  [#####.....] 12/40 step  3.1 step/s  elapsed 0:04  ETA 0:09`;
when the stream is not a TTY (a file, a pipe, a Ray job's log, `TERM=dumb`) each update that is due
is a line of its own: the first one at once, then at most one every `plain_every` seconds, plus the
last. `METASERVE_PROGRESS=live|plain|off` overrides the choice.

Own code rather than tqdm or rich: neither is a dependency today (tqdm is not installed with Ray),
the plain-line fallback under Ray Jobs and Tune must print complete lines with rate and ETA rather
than carriage-return frames, and the whole feature is ~100 lines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

MODES = ("live", "plain", "off")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def choose_mode(stream: TextIO) -> str:
    """'live' on an interactive terminal, 'plain' otherwise; METASERVE_PROGRESS forces one of live|plain|off."""
    forced = os.environ.get("METASERVE_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"METASERVE_PROGRESS={forced!r} is not one of {', '.join(MODES)}")
        return forced
    tty = hasattr(stream, "isatty") and stream.isatty()
    return "live" if tty and os.environ.get("TERM") != "dumb" else "plain"


class Progress:
    """Messages and counted phases on one stream (default stdout), live or as plain lines."""

    def __init__(
        self,
        stream: TextIO | None = None,
        mode: str | None = None,
        plain_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.mode = mode or choose_mode(self.stream)
        if self.mode not in MODES:
            raise ValueError(f"progress mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.plain_every, self.clock = plain_every, clock
        self._phase: tuple[str, int, str, float] | None = None  # name, total, unit, start time
        self._done, self._last_plain, self._drawn = 0, float("-inf"), False

    def __call__(self, message: str) -> None:
        """A line of its own (the live bar, if any, is redrawn below it)."""
        if self.mode == "off":
            return
        self._clear()
        self.stream.write(f"{message}\n")
        self._redraw()
        self.stream.flush()

    def start(self, name: str, total: int, unit: str = "step", done: int = 0) -> None:
        """Begin a counted phase of `total` units, `done` of them already behind (a resumed run)."""
        self.finish()
        self._phase, self._done, self._start_done = (name, max(total, 1), unit, self.clock()), done, done
        self._last_plain = float("-inf")

    def advance(self, done: int, note: str = "") -> None:
        """`done` units of the phase are finished; redraw (live) or print a line if one is due (plain)."""
        if self._phase is None or self.mode == "off":
            return
        self._done = done
        now = self.clock()
        if self.mode == "live":
            self._clear()
            self._draw(note)
        elif now - self._last_plain >= self.plain_every or done >= self._phase[1]:
            self.stream.write(self.line(note) + "\n")
            self._last_plain = now
        self.stream.flush()

    def finish(self) -> None:
        """End the phase (a live bar stays on screen as its final state)."""
        if self._phase is not None and self.mode == "live" and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._phase, self._drawn = None, False

    def line(self, note: str = "") -> str:
        """The phase's state: name, bar (live), i/N, rate, elapsed, ETA."""
        name, total, unit, start = self._phase
        elapsed = self.clock() - start
        ran = self._done - self._start_done
        rate = ran / elapsed if elapsed > 0 and ran > 0 else 0.0
        eta = (total - self._done) / rate if rate > 0 else None
        bar = ""
        if self.mode == "live":
            filled = int(20 * self._done / total)
            bar = " [" + "#" * filled + "." * (20 - filled) + "]"
        speed = f"{rate:.2f} {unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{unit}"  # slow: seconds each
        text = (
            f"{name}{bar} {self._done}/{total} {unit}s | {speed} | elapsed {_clock(elapsed)} | "
            f"ETA {_clock(eta) if eta is not None else '?'}"
        )
        return f"{text} | {note}" if note else text

    def _draw(self, note: str = "") -> None:
        self.stream.write("\r" + self.line(note))
        self._drawn = True

    def _clear(self) -> None:
        if self.mode == "live" and self._drawn:
            self.stream.write("\r\033[K")

    def _redraw(self) -> None:
        if self.mode == "live" and self._phase is not None and self._drawn:
            self._draw()


def as_progress(progress: Callable[[str], None] | bool | None) -> Callable[[str], None] | None:
    """What `metaserve.train(progress=...)` accepts: None (a Progress on an interactive terminal, else
    silent), True/False, or any message callback (print, a logger method, a Progress)."""
    if progress is None:
        return Progress() if choose_mode(sys.stdout) == "live" else None
    if progress is True:
        return Progress()
    return progress or None


def phase(
    progress: Callable[[str], None] | None, name: str, total: int, unit: str = "step", done: int = 0
) -> Callable[[int], None]:
    """Start a counted phase on `progress` and return its `advance`; a no-op for plain callbacks."""
    if isinstance(progress, Progress):
        progress.start(name, total, unit, done)
        return progress.advance
    return lambda _done, _note="": None


def end_phase(progress: Callable[[str], None] | None) -> None:
    """Finish the current phase of a Progress (nothing for plain callbacks)."""
    if isinstance(progress, Progress):
        progress.finish()


def resume_note(step: int, steps: int, final_eval: bool) -> str:
    """What a resume past `train.steps` does: nothing to train, so say so instead of silently re-testing."""
    more = f"raise train.steps above {step} (--set train.steps=N) to train further"
    then = "only the meta-test runs again" if final_eval else "nothing runs"
    return f"checkpoint is at step {step}, train.steps={steps}: no steps to train, {then}; {more}"
