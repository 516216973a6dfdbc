"""The central learner's loop: one object for every backend and entry point.

Per meta-step the executor returns the summed contributions of the meta-batch; the loop averages
them and hands the mean to the outer optimiser (as a gradient, or a negated delta, as the
algorithm's registry entry says). `metaserve train` calls `train_loop`; the Tune trainable wraps
it, passing `on_log` to report metrics and checkpoints. A run ends at `train.steps`, or earlier when
`train.time_budget_s` is spent or `train.early_stop` runs out of patience (runtime/stopping.py);
either way it writes its checkpoint and goes on to the meta-test, so a budgeted run is never killed.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metaserve.config import Config, config_to_dict
from metaserve.curriculum import Teacher, build_teacher
from metaserve.evaluation import EvalResult, evaluate, meta_test_record, protocol_steps, summarize
from metaserve.experiment import Learner, build_distribution, build_learner
from metaserve.models.functional import Params
from metaserve.progress import end_phase, phase, resume_note
from metaserve.runtime.executor import Executor, make_executor
from metaserve.runtime.stopping import Budget, after_row, exhausted
from metaserve.runtime.work import NonFiniteUpdate
from metaserve.store.checkpoint import best_path, latest_good_state, save_best, save_checkpoint
from metaserve.store.metrics import read_rows, write_metrics
from metaserve.store.rundir import init_run_dir, new_run_dir
from metaserve.store.storage import location, publish
from metaserve.store.tensorboard import TensorBoardLog
from metaserve.tasks.base import TaskDistribution

LogHook = Callable[[dict, "Path | None"], None]


@dataclass
class TrainState:
    """Everything a checkpoint holds: enough to continue exactly where the run stopped.

    The metrics history is not in it: metrics.parquet holds it, and a resumed run keeps that file's
    rows up to the checkpoint's step.
    """

    params: Params
    outer_state: dict
    step: int = 0
    skipped: int = 0
    teacher: dict = field(default_factory=dict)  # the curriculum teacher's state (plain values; {} without one)
    best: dict = field(default_factory=dict)  # early stopping: {"value", "step", "since"} of the best val row
    best_params: Params | None = None  # early stopping: the parameters at that row

    def to_dict(self, config: Config) -> dict:
        return {
            "params": self.params,
            "outer_state": self.outer_state,
            "step": self.step,
            "skipped": self.skipped,
            "rng": torch.get_rng_state(),
            "config": config_to_dict(config),
            "teacher": self.teacher,
            "best": self.best,
            "best_params": self.best_params,
        }

    def best_dict(self, config: Config) -> dict:
        """The best.pt checkpoint: the best row's parameters and step (for loading and testing, not resuming)."""
        return {
            "params": self.best_params,
            "outer_state": {},
            "step": self.best["step"],
            "config": config_to_dict(config),
            "best": {"metric": config.train.early_stop.metric, "value": self.best["value"]},
        }

    @classmethod
    def from_dict(cls, d: dict, device: torch.device) -> TrainState:
        torch.set_rng_state(d["rng"])

        def move(t: object) -> object:
            return t.to(device) if isinstance(t, torch.Tensor) and t.dim() > 0 else t

        outer = {
            k: ({n: move(v) for n, v in s.items()} if isinstance(s, dict) else s) for k, s in d["outer_state"].items()
        }
        best_params = d.get("best_params")
        return cls(
            {k: v.to(device) for k, v in d["params"].items()},
            outer,
            d["step"],
            d.get("skipped", 0),
            dict(d.get("teacher", {})),
            dict(d.get("best", {})),
            {k: v.to(device) for k, v in best_params.items()} if best_params is not None else None,
        )


@dataclass
class TrainResult:
    """What a finished run leaves: where it is, the parameters it hands on (with early stopping the best
    validation row's, as best.pt and `metaserve.load` give; otherwise the last step's), its final
    metrics, and why it stopped before `train.steps` (None: it did not)."""

    run_dir: Path
    params: Params
    metrics: dict[str, float]
    test: EvalResult | None = None
    stopped: str | None = None


class TrainLoop:
    """One run's loop: its pieces, its state and its metric rows in one place."""

    def __init__(
        self,
        config: Config,
        learner: Learner,
        distribution: TaskDistribution,
        teacher: Teacher,
        run_dir: Path,
        state: TrainState,
        rows: list[dict],
        on_log: LogHook | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.config, self.learner, self.distribution, self.teacher = config, learner, distribution, teacher
        self.run_dir, self.state, self.rows = run_dir, state, rows
        self.on_log, self.say = on_log, say or (lambda _msg: None)
        self.window: list[dict] = []  # per-step metrics and timings since the last log row
        self.stopped: str | None = None  # why the run stops before train.steps (budget, patience)
        stop = config.train.early_stop
        if stop is not None and exhausted(state.best, stop):  # resumed after it stopped early
            self.stopped = self.patience_note()

    def run(self, executor: Executor) -> None:
        """Meta-train until `train.steps` (or the budget or patience runs out), logging and checkpointing."""
        tc = self.config.train
        budget = Budget(tc.time_budget_s)
        tick = phase(self.say, "meta-train", tc.steps, "step", done=self.state.step)
        if self.state.step < tc.steps and self.stopped is None:
            self.say(f"first step: {tc.meta_batch} tasks per meta-batch, a line per {tc.log_every} steps")
        while self.state.step < tc.steps and self.stopped is None:
            space = self.teacher.space(self.state.teacher)  # omega of this meta-step
            columns = self.teacher.columns(self.state.teacher)
            self.step(executor, space)
            if self.teacher.due(
                self.state.step
            ):  # between meta-steps: the teacher sees the student's val loss on omega
                self.state.teacher = self.teacher.update(self.state.teacher, self.teacher_loss(space))
            if budget.spent() and self.state.step < tc.steps:  # this step's row and checkpoint end the training
                self.stopped = f"train.time_budget_s={tc.time_budget_s:g} spent at step {self.state.step}"
            if self.state.step % tc.log_every == 0 or self.state.step == tc.steps or self.stopped:
                self.end_window(columns)
            tick(self.state.step)
        end_phase(self.say)
        if self.stopped is not None:
            self.say(f"stopped before train.steps={tc.steps}: {self.stopped}")

    def end_window(self, columns: dict) -> None:
        """The log row of the steps since the last one, or only the checkpoint when every one was skipped
        (a skipped step still counts: its checkpoint is due)."""
        if self.window:
            active = self.teacher.active
            self.log({**columns, "teacher_loss": self.teacher.last_loss(self.state.teacher)} if active else {})
        elif self.checkpoint_due():
            self.checkpoint()
        self.window = []

    def step(self, executor: Executor, space: object | None) -> None:
        """One meta-step: the executor's summed update, averaged, then the outer step."""
        t0 = time.perf_counter()
        state = self.state
        try:
            update, timing = executor.compute(state.params, state.step, range(self.config.train.meta_batch), space)
        except NonFiniteUpdate as err:
            if self.config.runtime.on_nonfinite == "stop":
                raise NonFiniteUpdate(
                    f"{err}; the run stopped, its last good checkpoint is in {self.run_dir / 'checkpoints'}"
                ) from None
            warnings.warn(f"skipping step: {err}", stacklevel=2)
            state.step, state.skipped = state.step + 1, state.skipped + 1
            return
        t1 = time.perf_counter()
        state.params, state.outer_state = self.learner.outer_step(
            state.params, update.mean_contribution(), state.outer_state
        )
        state.step += 1
        t2 = time.perf_counter()
        self.window.append({**update.mean_metrics(), **timing, "learner_time": t2 - t1, "step_time": t2 - t0})

    def checkpoint_due(self) -> bool:
        tc = self.config.train
        return self.state.step % tc.checkpoint_every == 0 or self.state.step == tc.steps or self.stopped is not None

    def checkpoint(self) -> Path:
        tc = self.config.train
        return save_checkpoint(self.run_dir, self.state.step, self.state.to_dict(self.config), keep=tc.keep_checkpoints)

    def log(self, extra: dict) -> None:
        """One metrics row (window means, meta-validation, the teacher's columns), its checkpoint, progress."""
        tc, window = self.config.train, self.window
        row = {"step": self.state.step, **{k: sum(w[k] for w in window) / len(window) for k in window[0]}}
        row["tasks_per_s"] = tc.meta_batch / row["step_time"]
        row |= extra  # the teacher's omega at this step, its stage or centre, its latest meta-validation loss
        if tc.val_tasks:
            row |= self.validation_columns()
        if tc.early_stop is not None:
            self.track_best(row[tc.early_stop.metric])
        self.rows.append(row)
        write_metrics(self.run_dir, self.rows)  # before the checkpoint: a checkpoint's rows are always on disk
        ckpt = self.checkpoint() if self.checkpoint_due() else None
        publish(self.run_dir, self.config.output_dir)  # a URI output_dir: mirror the new rows and checkpoint
        self.say(progress_line(row, tc.steps))
        if self.on_log is not None:  # the last row of a run that stops early says so (a Tune trial's last report)
            self.on_log(row | ({"stopped": 1.0} if self.stopped else {}), ckpt)

    def track_best(self, value: float) -> None:
        """Patience on the early-stopping column: a new best row writes best.pt; patience used up stops."""
        stop, state = self.config.train.early_stop, self.state
        state.best, new_best = after_row(state.best, float(value), state.step, stop)
        if new_best:
            state.best_params = {k: v.detach().clone() for k, v in state.params.items()}
            save_best(self.run_dir, state.best_dict(self.config))
        elif exhausted(state.best, stop) and self.stopped is None:
            self.stopped = self.patience_note()

    def patience_note(self) -> str:
        stop, best = self.config.train.early_stop, self.state.best
        return (
            f"{stop.metric} has not improved for train.early_stop.patience={stop.patience} log rows; "
            f"the best row is step {best.get('step')} ({stop.metric} {best.get('value', float('nan')):.4g})"
        )

    def sync_best(self) -> None:
        """Make best.pt the resumed state's best (a best.pt written after its checkpoint is from a lost future)."""
        path = best_path(self.run_dir)
        if self.state.best_params is not None:
            save_best(self.run_dir, self.state.best_dict(self.config))
        elif path.is_file():
            path.unlink()

    def final_params(self) -> Params:
        """The parameters the run hands on: the best validation row's with early stopping, else the last."""
        if self.config.train.early_stop is not None and self.state.best_params is not None:
            return self.state.best_params
        return self.state.params

    def validation_columns(self) -> dict[str, float]:
        """val_<metric> after adaptation and, for learners that adapt by steps, val_<metric>_pre before it."""
        val = evaluate(
            self.learner, self.state.params, self.distribution, episodes=self.config.train.val_tasks, stream="val"
        )
        cols = {f"val_{k}": v for k, v in val.curve[-1].items() if k != "inner_step"}
        if self.config.entry.evaluation != "closed-form":
            cols |= {f"val_{k}_pre": v for k, v in val.curve[0].items() if k != "inner_step"}
        return cols

    def teacher_loss(self, space: object | None) -> float:
        """Post-adaptation query loss on `curriculum.val_tasks` validation tasks of `space` (the same tasks each
        time)."""
        val = evaluate(
            self.learner,
            self.state.params,
            self.distribution,
            episodes=self.config.curriculum.val_tasks,
            stream="val",
            space=space,
        )
        return val.curve[-1]["loss"]

    def meta_test(self, executor: Executor) -> EvalResult:
        """The final meta-test on held-out tasks (spread over the executor's workers), saved as test.json."""
        ec = self.config.eval
        steps = protocol_steps(self.learner, ec.inner_steps)
        self.say(f"meta-test: {ec.episodes} held-out episodes")
        params = self.final_params()
        curves = executor.evaluate(
            params,
            range(ec.episodes),
            steps,
            ec.curve,
            progress=phase(self.say, "meta-test episode", ec.episodes, "episode"),
        )
        end_phase(self.say)
        test = summarize(curves, self.learner.algorithm.kind, steps)
        record = {
            "metric": test.metric,
            "mean": test.mean,
            "ci95": test.ci95,
            "episodes": test.episodes,
            "curve": test.curve,
            "params_step": self.state.best["step"] if params is not self.state.params else self.state.step,
            "trained_steps": self.state.step,
            "stopped": self.stopped,
            **meta_test_record(self.config, self.distribution),
        }  # which parameters were tested, why training stopped, batch-norm modes, overlap
        (self.run_dir / "test.json").write_text(json.dumps(record, indent=2))
        return test


def train_loop(
    config: Config,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    on_log: LogHook | None = None,
    progress: Callable[[str], None] | None = None,
    final_eval: bool = True,
    executor: Executor | None = None,
    tensorboard: bool = True,
    keep_config: bool = False,
) -> TrainResult:
    """Meta-train `config` to `train.steps` (or its budget or patience), writing the run directory; resume
    from its latest good checkpoint.

    `executor` lends an already running executor (the caller keeps and closes it); by default one is
    made for `runtime.backend` and closed at the end. `tensorboard=False` skips the run's own
    TensorBoard events (a Tune trial's reports are written by Tune's logger instead). `keep_config`
    (`metaserve train --resume`) leaves the run's config.yaml as it is (see store/resume.py).
    """
    if progress is not None:
        progress(f"loading data: {config.task.name} ({config.algorithm.name}, {config.train.steps} steps)")
    distribution = build_distribution(config)  # reads and validates data before any worker starts
    learner = build_learner(config)
    teacher = build_teacher(config, distribution)  # checks every task space it may pick against the data
    if run_dir is None or not keep_config:
        run_dir = new_run_dir(config) if run_dir is None else init_run_dir(run_dir, config)
    state, rows = initial_state(config, learner, run_dir if resume else None, teacher)
    loop = TrainLoop(config, learner, distribution, teacher, run_dir, state, rows, on_log, progress)
    if resume:
        loop.sync_best()
    if resume and state.step >= config.train.steps and loop.stopped is None:
        loop.say(resume_note(state.step, config.train.steps, final_eval))
    loop.say(
        f"run directory: {location(run_dir, config.output_dir)}"
        + (f" (resumed at step {state.step})" if state.step else "")
    )
    owned = executor is None
    with TensorBoardLog(run_dir, state.step) if tensorboard else nullcontext() as board:
        if board is not None:
            loop.on_log = _also_to(board, on_log)
        executor = make_executor(config, learner, distribution) if owned else executor
        try:
            loop.run(executor)
            test = loop.meta_test(executor) if final_eval else None
        finally:
            if owned:
                executor.close()
        if test is not None:
            if board is not None:
                board.write({"step": state.step, f"test_{test.metric}": test.mean})
            loop.say(str(test))
    metrics = dict(rows[-1]) if rows else {}
    if test is not None:
        metrics |= {f"test_{test.metric}": test.mean, f"test_{test.metric}_ci95": test.ci95}
        publish(run_dir, config.output_dir, final=True)  # a URI output_dir: mirror the finished run
    return TrainResult(run_dir, loop.final_params(), metrics, test, loop.stopped)


def _also_to(board: TensorBoardLog, on_log: LogHook | None) -> LogHook:
    """`on_log`, preceded by writing the row to TensorBoard."""

    def log(row: dict, ckpt: Path | None) -> None:
        board.write(row)
        if on_log is not None:
            on_log(row, ckpt)

    return log


def initial_state(
    config: Config, learner: Learner, resume_dir: Path | None, teacher: Teacher
) -> tuple[TrainState, list[dict]]:
    """The latest good checkpoint of `resume_dir` with the metric rows up to it, or a fresh start."""
    if resume_dir is not None:
        saved = latest_good_state(resume_dir, learner.device)
        if saved is not None:
            state = TrainState.from_dict(saved, learner.device)
            state.teacher = teacher.restore(state.teacher)
            return state, [r for r in read_rows(resume_dir) if r["step"] <= state.step]
        if any(resume_dir.glob("checkpoints/*")):
            warnings.warn(f"no loadable checkpoint in {str(resume_dir)!r}: starting from step 0", stacklevel=3)
    params = learner.initial_params()
    return TrainState(params, learner.outer.init(params), teacher=teacher.init()), []


def progress_line(row: dict, steps: int) -> str:
    """One progress line of a metrics row."""
    parts = [f"step {row['step']:>{len(str(steps))}}/{steps}", f"loss {row['loss']:.4f}"]
    if "acc" in row:
        parts.append(f"acc {100 * row['acc']:.1f}%")
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f}")
    if "val_acc" in row:
        parts.append(f"val acc {100 * row['val_acc']:.1f}%")
    parts.append(f"{row['tasks_per_s']:.0f} tasks/s")
    return " | ".join(parts)
