"""The central learner loop: one function for every backend and entry point.

Per meta-step: the executor returns the summed contributions of the meta-batch, the learner
averages them and takes the algorithm's outer step. `metaserve train` calls `train_loop` directly;
the Tune trainable wraps it, passing `on_log` to report metrics and checkpoints.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from metaserve.config import Config, config_to_dict
from metaserve.curriculum import Teacher, build_teacher
from metaserve.evaluation import EvalResult, evaluate, meta_test_record
from metaserve.experiment import Learner, build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.runtime.work import NonFiniteUpdate
from metaserve.store.checkpoint import latest_good_state, save_checkpoint
from metaserve.store.metrics import write_metrics
from metaserve.store.rundir import init_run_dir, new_run_dir
from metaserve.store.storage import location, publish
from metaserve.store.tensorboard import TensorBoardLog

LogHook = Callable[[dict, "Path | None"], None]


@dataclass
class TrainState:
    """Everything a checkpoint holds: enough to continue exactly where the run stopped."""

    params: Params
    outer_state: dict
    step: int = 0
    rows: list[dict] = field(default_factory=list)
    skipped: int = 0
    teacher: dict = field(default_factory=dict)  # the curriculum teacher's state (plain values; {} without one)

    def to_dict(self, config: Config) -> dict:
        return {"params": self.params, "outer_state": self.outer_state, "step": self.step, "rows": self.rows,
                "skipped": self.skipped, "rng": torch.get_rng_state(), "config": config_to_dict(config), "teacher": self.teacher}

    @classmethod
    def from_dict(cls, d: dict, device: torch.device) -> "TrainState":
        torch.set_rng_state(d["rng"])
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.dim() > 0 else t  # noqa: E731
        outer = {k: ({n: move(v) for n, v in s.items()} if isinstance(s, dict) else s) for k, s in d["outer_state"].items()}
        return cls({k: v.to(device) for k, v in d["params"].items()}, outer, d["step"], list(d.get("rows", [])), d.get("skipped", 0),
                   dict(d.get("teacher", {})))


@dataclass
class TrainResult:
    """What a finished run leaves: where it is, its final parameters and its final metrics."""

    run_dir: Path
    params: Params
    metrics: dict[str, float]
    test: EvalResult | None = None


def make_executor(config: Config, learner: Learner, distribution):
    """The executor of `runtime.backend`."""
    if config.runtime.backend == "ray":
        from metaserve.runtime.ray_executor import RayExecutor, trial_group

        group = trial_group(config)  # inside a Tune trial: the workers' bundles were reserved with it
        return RayExecutor(config, group=group, bundle_offset=1) if group is not None else RayExecutor(config)
    from metaserve.runtime.local import LocalExecutor

    return LocalExecutor(learner, distribution)


def train_loop(config: Config, *, run_dir: Path | None = None, resume: bool = False, on_log: LogHook | None = None,
               progress: Callable[[str], None] | None = None, final_eval: bool = True, executor=None,
               tensorboard: bool = True) -> TrainResult:
    """Meta-train `config` to `train.steps`, writing the run directory; resume from its latest good checkpoint.

    `executor` lends an already running executor (the caller keeps and closes it); by default one is
    made for `runtime.backend` and closed at the end. `tensorboard=False` skips the run's own
    TensorBoard events (a Tune trial's reports are written by Tune's logger instead).
    """
    distribution = build_distribution(config)  # reads and validates data before any worker starts
    learner = build_learner(config)
    teacher = build_teacher(config, distribution)  # checks every task space it may pick against the data
    run_dir = new_run_dir(config) if run_dir is None else init_run_dir(run_dir, config)
    state = _initial_state(config, learner, run_dir if resume else None, teacher)
    say = progress or (lambda _msg: None)
    say(f"run directory: {location(run_dir, config.output_dir)}" + (f" (resumed at step {state.step})" if state.step else ""))
    owned = executor is None
    with TensorBoardLog(run_dir, state.step) if tensorboard else nullcontext() as board:
        executor = make_executor(config, learner, distribution) if owned else executor
        try:
            _loop(config, learner, distribution, executor, state, run_dir, _logging_to(board, on_log), say, teacher)
        finally:
            if owned:
                executor.close()
        test = _meta_test(config, learner, distribution, state.params, run_dir) if final_eval else None
        if test is not None:
            if board is not None:
                board.write({"step": state.step, f"test_{test.metric}": test.mean})
            say(str(test))
    metrics = dict(state.rows[-1]) if state.rows else {}
    if test is not None:
        metrics |= {f"test_{test.metric}": test.mean, f"test_{test.metric}_ci95": test.ci95}
        publish(run_dir, config.output_dir, final=True)  # a URI output_dir: mirror the finished run
    return TrainResult(run_dir, state.params, metrics, test)


def _meta_test(config: Config, learner: Learner, distribution, params: Params, run_dir: Path) -> EvalResult:
    """The final meta-test on held-out tasks, saved as test.json."""
    test = evaluate(learner.algorithm, params, distribution, seed=config.seed, episodes=config.eval.episodes,
                    steps=config.eval.inner_steps, device=learner.device, dtype=learner.dtype,
                    norm=config.eval.batch_norm)
    record = {"metric": test.metric, "mean": test.mean, "ci95": test.ci95, "episodes": test.episodes,
              "curve": test.curve, **meta_test_record(config, distribution)}  # batch-norm modes, class overlap
    (run_dir / "test.json").write_text(json.dumps(record, indent=2))
    return test


def _logging_to(board: TensorBoardLog | None, on_log: LogHook | None) -> LogHook | None:
    """`on_log`, preceded by writing the row to TensorBoard."""
    if board is None:
        return on_log

    def log(row: dict, ckpt: Path | None) -> None:
        board.write(row)
        if on_log is not None:
            on_log(row, ckpt)

    return log


def _initial_state(config: Config, learner: Learner, resume_dir: Path | None, teacher: Teacher) -> TrainState:
    if resume_dir is not None:
        saved = latest_good_state(resume_dir, learner.device)
        if saved is not None:
            state = TrainState.from_dict(saved, learner.device)
            state.teacher = teacher.restore(state.teacher)
            return state
        if any(resume_dir.glob("checkpoints/*")):
            warnings.warn(f"no loadable checkpoint in {str(resume_dir)!r}: starting from step 0", stacklevel=3)
    params = learner.initial_params()
    return TrainState(params, learner.algorithm.init_outer_state(params), teacher=teacher.init())


def _loop(config: Config, learner: Learner, distribution, executor, state: TrainState, run_dir: Path, on_log: LogHook | None, say,
          teacher: Teacher) -> None:
    algo, tc = learner.algorithm, config.train
    window: list[dict] = []
    while state.step < tc.steps:
        t0 = time.perf_counter()
        space, used = teacher.space(state.teacher), teacher.columns(state.teacher)  # omega of this meta-step
        try:
            update, timing = executor.compute(state.params, state.step, range(tc.meta_batch), space)
        except NonFiniteUpdate as err:
            if config.runtime.on_nonfinite == "stop":
                raise NonFiniteUpdate(f"{err}; the run stopped, its last good checkpoint is in {run_dir / 'checkpoints'}") from None
            warnings.warn(f"skipping step: {err}", stacklevel=2)
            state.step, state.skipped = state.step + 1, state.skipped + 1
        else:
            t1 = time.perf_counter()
            state.params, state.outer_state = algo.outer_step(state.params, update.mean_contribution(), state.outer_state)
            state.step += 1
            t2 = time.perf_counter()
            window.append({**update.mean_metrics(), **timing, "learner_time": t2 - t1, "step_time": t2 - t0})
        if teacher.due(state.step):  # between meta-steps: the teacher sees the student's meta-validation loss on omega
            state.teacher = teacher.update(state.teacher, _teacher_loss(config, learner, distribution, state.params, space))
        # A skipped step still counts: its log row (if any step of the window ran) and checkpoint are due.
        if state.step % tc.log_every == 0 or state.step == tc.steps:
            if window:
                extra = {**used, "teacher_loss": teacher.last_loss(state.teacher)} if teacher.active else {}
                _log(config, learner, distribution, state, window, run_dir, on_log, say, extra)
            elif state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
                save_checkpoint(run_dir, state.step, state.to_dict(config), keep=tc.keep_checkpoints)
            window = []


def _teacher_loss(config: Config, learner: Learner, distribution, params: Params, space) -> float:
    """Post-adaptation query loss on `curriculum.val_tasks` validation tasks of `space` (the same tasks each time)."""
    val = evaluate(learner.algorithm, params, distribution, seed=config.seed, episodes=config.curriculum.val_tasks,
                   stream="val", space=space, device=learner.device, dtype=learner.dtype)
    return val.curve[-1]["loss"]


def _log(config: Config, learner: Learner, distribution, state: TrainState, window: list[dict], run_dir: Path, on_log, say,
         extra: dict | None = None) -> None:
    tc = config.train
    row = {"step": state.step, **{k: sum(w[k] for w in window) / len(window) for k in window[0]}}
    row["tasks_per_s"] = tc.meta_batch / row["step_time"]
    row |= extra or {}  # the teacher's omega at this step, its stage or centre, its latest meta-validation loss
    if tc.val_tasks:
        val = evaluate(learner.algorithm, state.params, distribution, seed=config.seed, episodes=tc.val_tasks,
                       stream="val", device=learner.device, dtype=learner.dtype)
        row |= {f"val_{k}": v for k, v in val.curve[-1].items() if k != "inner_step"}
        row |= {f"val_{k}_pre": v for k, v in val.curve[0].items() if k != "inner_step"}
    state.rows.append(row)
    ckpt = None
    if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
        ckpt = save_checkpoint(run_dir, state.step, state.to_dict(config), keep=tc.keep_checkpoints)
    write_metrics(run_dir, state.rows)
    publish(run_dir, config.output_dir)  # a URI output_dir: mirror the new rows and checkpoint
    say(_progress_line(row, tc.steps))
    if on_log is not None:
        on_log(row, ckpt)


def _progress_line(row: dict, steps: int) -> str:
    parts = [f"step {row['step']:>{len(str(steps))}}/{steps}", f"loss {row['loss']:.4f}"]
    if "acc" in row:
        parts.append(f"acc {100 * row['acc']:.1f}%")
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f}")
    if "val_acc" in row:
        parts.append(f"val acc {100 * row['val_acc']:.1f}%")
    parts.append(f"{row['tasks_per_s']:.0f} tasks/s")
    return " | ".join(parts)
