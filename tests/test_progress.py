"""Progress: a first line at once, rate and ETA from a hand count, plain lines off a terminal."""

from __future__ import annotations

import io

import pytest

import metaserve
from metaserve.progress import Progress, as_progress, choose_mode

TINY = {
    "name": "tiny",
    "seed": 0,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fomaml", "inner_lr": 0.02, "inner_steps": 1, "outer": {"optimizer": "adam", "lr": 0.001}},
    "train": {"steps": 3, "meta_batch": 2, "log_every": 50, "checkpoint_every": 50, "val_tasks": 2, "device": "cpu"},
    "eval": {"episodes": 4},
}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_rate_and_eta_from_the_clock(monkeypatch):
    monkeypatch.delenv("METASERVE_PROGRESS", raising=False)
    out, clock = io.StringIO(), FakeClock()
    p = Progress(out, plain_every=10.0, clock=clock)
    assert p.mode == "plain"  # a StringIO is no terminal
    p.start("meta-train", 10)
    clock.t += 4.0
    p.advance(2)  # first update: printed at once
    clock.t += 1.0
    p.advance(3)  # 1 s later: not due
    clock.t += 9.0
    p.advance(5)  # 10 s after the first line: due
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    # 2 steps in 4 s = 2.0 s/step, 8 left -> 16 s; then 5 steps in 14 s = 2.8 s/step, 5 left -> 14 s
    assert lines[0] == "meta-train 2/10 steps | 2.0 s/step | elapsed 0:04 | ETA 0:16"
    assert lines[1] == "meta-train 5/10 steps | 2.8 s/step | elapsed 0:14 | ETA 0:14"
    p.advance(10)  # the last one always prints
    assert out.getvalue().splitlines()[-1].startswith("meta-train 10/10 steps")


def test_resumed_phase_counts_only_new_steps_in_the_rate():
    out, clock = io.StringIO(), FakeClock()
    p = Progress(out, mode="plain", clock=clock)
    p.start("meta-train", 100, done=90)
    clock.t += 5.0
    p.advance(95)  # 5 new steps in 5 s: 1 step/s, 5 left
    assert out.getvalue().strip() == "meta-train 95/100 steps | 1.00 step/s | elapsed 0:05 | ETA 0:05"


def test_live_bar_redraws_one_line_and_messages_go_above_it(monkeypatch):
    monkeypatch.delenv("METASERVE_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out, clock = Tty(), FakeClock()
    p = Progress(out, clock=clock)
    assert p.mode == "live"
    p.start("meta-train", 4)
    clock.t += 1.0
    p.advance(1)
    p("step 1/4 | loss 1.0")
    p.advance(2)
    p.finish()
    text = out.getvalue()
    assert "\r\033[K" + "step 1/4 | loss 1.0\n" in text  # the bar is cleared, the message printed, the bar redrawn
    assert text.count("\n") == 2  # the message and the bar's last state: frames are carriage returns
    assert "[##########..........] 2/4 steps" in text


def test_mode_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("METASERVE_PROGRESS", "off")
    assert choose_mode(Tty()) == "off"
    out = io.StringIO()
    Progress(out)("hidden")
    assert out.getvalue() == ""
    monkeypatch.setenv("METASERVE_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="'fancy' is not one of live, plain, off"):
        choose_mode(io.StringIO())


def test_default_api_progress_is_silent_off_a_terminal(monkeypatch):
    monkeypatch.delenv("METASERVE_PROGRESS", raising=False)
    assert as_progress(None) is None  # pytest's stdout is captured, not a terminal
    assert isinstance(as_progress(True), Progress)
    assert as_progress(False) is None and as_progress(print) is print


def test_train_says_what_it_computes_before_the_first_log_row(tmp_path):
    """steps (3) < log_every (50): still a first line before any work, and a line per due step."""
    out = io.StringIO()
    result = metaserve.train(
        {**TINY, "output_dir": str(tmp_path)},
        ["train.steps=2", "eval.episodes=3"],
        progress=Progress(out, mode="plain", plain_every=0.0),
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "loading data: sinusoid (fomaml, 2 steps)"
    assert lines[2].startswith("first step: 2 tasks per meta-batch")
    assert [ln.split(" |")[0] for ln in lines if ln.startswith("meta-train ")] == [
        "meta-train 1/2 steps",
        "meta-train 2/2 steps",
    ]
    assert "meta-test: 3 held-out episodes" in lines
    assert result.test.episodes == 3 and result.metrics["step"] == 2  # the overrides were applied


def test_resume_below_the_checkpoint_says_so(tmp_path):
    first = metaserve.train({**TINY, "output_dir": str(tmp_path)}, progress=False)
    out = io.StringIO()
    metaserve.train(
        {**TINY, "output_dir": str(tmp_path)},
        ["train.steps=2"],
        resume=first.run_dir,
        progress=Progress(out, mode="plain"),
    )
    assert "checkpoint is at step 3, train.steps=2: no steps to train, only the meta-test runs again" in out.getvalue()
