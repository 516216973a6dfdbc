"""`metaserve report RUN_DIR|SWEEP_DIR`: PNG plots and a short markdown summary in `<dir>/report/`.

A run: learning curves (meta-train and meta-val query loss and accuracy, before and after
adaptation, vs meta-step), adaptation curves (query loss vs inner step before and after
meta-training on held-out tasks of the full, hardest task space: the protocol of Fig. 1 of Shevchuk,
"Teaching Your MAML") and, under a curriculum teacher, the omega trajectory. A sweep: the metric of
every trial config and the trials' curves. Beside each PNG a CSV holds the data read back from the
drawn figure (panel, line, x, y, the 95% CI band where one is drawn, and the panel's axis labels and
scales), so the plotted numbers can be checked and re-plotted. Sinusoid runs also get the fit plot of
Finn et al. (2017), Fig. 2: prediction vs the true curve after 0, 1 and 10 inner steps on one test task.

Readability rules: a y axis whose positive values span more than `LOG_SPAN` (1e3) is logarithmic (one
diverged trial no longer flattens the others); step axes have integer ticks; sweep legends name the
hyperparameters; the summary's meta-test figure is the run's own test.json (re-evaluated only when
asked: `metaserve report --evaluate`).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from metaserve.progress import end_phase, phase

matplotlib.use("Agg")  # files only: no display on servers and Ray nodes
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from metaserve.evaluation import EvalResult, evaluate
from metaserve.store.checkpoint import latest_good_state
from metaserve.store.metrics import METRICS_FILE, read_metrics

REPORT_DIR = "report"
LOG_SPAN = 1e3  # max/min of a panel's positive values above which its y axis is logarithmic
NAMES = {"loss": "loss", "acc": "accuracy", "mse": "MSE"}  # one name per metric in every label
FIT_STEPS = (0, 1, 10)  # Finn et al. 2017, Fig. 2: pre-update, one and ten gradient steps
CSV_COLUMNS = ["panel", "line", "x", "y", "low", "high", "xlabel", "ylabel", "xscale", "yscale"]
CURVES = {  # column -> legend label
    "loss": "meta-train, after adaptation",
    "loss_pre": "meta-train, before adaptation",
    "val_loss": "meta-val, after adaptation",
    "val_loss_pre": "meta-val, before adaptation",
}


def learning_curves(df: pd.DataFrame) -> Figure:
    """Query loss (and accuracy, for classification) vs meta-step, one line per logged column."""
    panels = [("query loss", list(CURVES))] + (
        [("query accuracy", [c.replace("loss", "acc") for c in CURVES])] if "acc" in df else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, columns) in zip(axes[0], panels):
        for col in (c for c in columns if c in df):
            ax.plot(df["step"], df[col], label=CURVES[col.replace("acc", "loss")], marker="." if len(df) < 30 else None)
        ax.set(title=title, xlabel="meta-step", ylabel=title.split()[-1])
        _readable(ax)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def choose_scale(values) -> str:
    """'log' when the finite positive values span more than LOG_SPAN and none is <= 0, else 'linear'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or (v <= 0).any():
        return "linear"
    return "log" if v.max() / v.min() > LOG_SPAN else "linear"


def _readable(ax, integer_x: bool = True) -> None:
    """The panel's y scale from its plotted data (see choose_scale); integer ticks on step axes."""
    ys = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), dtype=float)]
    ax.set_yscale(choose_scale(ys))
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(ax, x, mean, half, label: str) -> None:
    """A shaded 95% CI band, its bounds kept on the artist for figure_data."""
    mean, half = np.asarray(mean, float), np.asarray(half, float)
    x, lo, hi = np.asarray(x, float), mean - half, mean + half
    poly = ax.fill_between(x, lo, hi, alpha=0.2, label=f"{label} (95% CI)")
    poly.metaserve_band = (x, lo, hi)


def adaptation_curves(before: EvalResult, after: EvalResult, step: int) -> Figure:
    """Query loss (and accuracy) vs inner step on held-out tasks, before and after meta-training."""
    keys = ["loss"] + (["acc"] if "acc" in after.curve[0] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for result, label in ((before, "before meta-training"), (after, f"after meta-training (step {step})")):
            x, y = [r["inner_step"] for r in result.curve], [r[key] for r in result.curve]
            ax.plot(x, y, marker="o", label=label)
            if result.curve_ci95:
                _band(ax, x, y, [r[key] for r in result.curve_ci95], label)
        title = f"query {NAMES[key]}, {after.episodes} test tasks"
        ax.set(title=title, xlabel="inner step", ylabel=NAMES[key])
        _readable(ax)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def omega_trajectory(df: pd.DataFrame) -> Figure | None:
    """The task-space parameters a teacher set at each logged step (and its centre or stage); None without a teacher."""
    names = [c.removeprefix("omega_") for c in df if c.startswith("omega_")]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5 * (len(names) + 1), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(df["step"], df[f"omega_{name}"], marker=".", label="omega trained on at the logged step")
        if f"teacher_mean_{name}" in df:
            ax.plot(df["step"], df[f"teacher_mean_{name}"], linestyle="--", label="teacher centre")
        ax.set(title=f"omega: {name}", xlabel="meta-step", ylabel=name)
        _readable(ax)
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    ax.plot(df["step"], df["teacher_loss"], marker=".", label="teacher meta-val loss (on omega)")
    if "val_loss" in df:
        ax.plot(df["step"], df["val_loss"], label="meta-val loss (full task space)")
    ax.set(title="what the teacher sees", xlabel="meta-step", ylabel="loss")
    _readable(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_comparison(results: pd.DataFrame, metric: str, keys: list[str]) -> Figure:
    """The metric at each trial's last report, one point per trial config (best first)."""
    column = f"{metric}_last"
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(results) + 2), 4.5))
    labels = [trial_label(r, keys) for _, r in results.iterrows()]
    ax.plot(range(len(results)), results[column], marker="o", linestyle="none", label=f"{metric} at the last report")
    ax.set_xticks(range(len(results)), labels, rotation=60, ha="right", fontsize=7)
    ax.set(title=f"sweep: {metric} per trial", ylabel=metric)
    _readable(ax, integer_x=False)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trial_label(row: pd.Series, keys: list[str]) -> str:
    """A trial named by its hyperparameters, e.g. 'inner_lr=0.0123, inner_steps=5' (last part of each dotted key)."""
    return ", ".join(f"{k.split('.')[-1]}={_short(row[k])}" for k in keys) or str(row.get("trial_id", "trial"))


def sweep_curves(results: pd.DataFrame, metric: str, keys: list[str] | None = None) -> Figure:
    """Each trial's logged `metric` vs meta-step, from its run directory, labelled by its hyperparameters."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in results.iterrows():
        path = Path(r["run_dir"]) / METRICS_FILE
        if path.is_file():
            df = pd.read_parquet(path)
            if metric in df:
                ax.plot(df["step"], df[metric], marker=".", label=trial_label(r, keys or []))
    ax.set(title=f"sweep: {metric} per trial", xlabel="meta-step", ylabel=metric)
    _readable(ax)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def figure_data(fig: Figure) -> pd.DataFrame:
    """Every plotted line of a figure as rows (panel, line, x, y), read back from the artists."""
    rows = []
    for ax in fig.axes:
        axis = {
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(),
            "yscale": ax.get_yscale(),
        }
        for line in ax.get_lines():
            rows += [
                {"panel": ax.get_title(), "line": line.get_label(), "x": float(x), "y": float(y), **axis}
                for x, y in zip(line.get_xdata(), line.get_ydata())
            ]
        for band in (c for c in ax.collections if hasattr(c, "metaserve_band")):
            rows += [
                {
                    "panel": ax.get_title(),
                    "line": band.get_label(),
                    "x": float(x),
                    "y": float("nan"),
                    "low": float(lo),
                    "high": float(hi),
                    **axis,
                }
                for x, lo, hi in zip(*band.metaserve_band)
            ]
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def save(fig: Figure, path: Path) -> Path:
    """Write `path` (.png) and the figure's data beside it (.csv), then free the figure."""
    fig.savefig(path, dpi=110)
    figure_data(fig).to_csv(path.with_suffix(".csv"), index=False)
    plt.close(fig)
    return path


def sinusoid_fit(
    algorithm, params, task, amplitude: float, phase_: float, x_range: tuple[float, float], inner_lr: float
) -> Figure:
    """Finn et al. (2017), Fig. 2: the true curve, the K support points, and the prediction on a grid after
    0, 1 and 10 inner SGD steps (step size `inner_lr`) from the meta-learned parameters."""
    sx = task.support_x
    grid = torch.linspace(x_range[0], x_range[1], 200, dtype=sx.dtype, device=sx.device)[:, None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid[:, 0].cpu(), (amplitude * torch.sin(grid[:, 0] - phase_)).cpu(), color="black", label="true curve")
    ax.plot(
        task.support_x[:, 0].cpu(),
        task.support_y[:, 0].cpu(),
        "^",
        color="purple",
        label=f"{len(task.support_x)} support points",
    )
    adapted, done = params, 0
    for k in FIT_STEPS:
        if k > done:
            adapted, done = algorithm.adapt(adapted, task.support_x, task.support_y, steps=k - done), k
        with torch.no_grad():
            ax.plot(
                grid[:, 0].cpu(),
                algorithm.predict(adapted, grid)[:, 0].cpu(),
                linestyle="--",
                label=f"after {k} step{'s' if k != 1 else ''}",
            )
    ax.set(title=f"sinusoid fit: A={amplitude:.2f}, phase={phase_:.2f} (inner lr {inner_lr:g})", xlabel="x", ylabel="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report(path: str | Path, *, episodes: int = 100, evaluate_test: bool = False, progress=None) -> list[Path]:
    """Plots and summary.md for a run or a sweep directory; returns the files written.

    `episodes`: test tasks behind the adaptation curves; `evaluate_test`: re-run the meta-test on
    `eval.episodes` tasks for the summary instead of reading test.json; `progress`: a message callback
    or a metaserve.progress.Progress (what is being computed, episode i/N).
    """
    path = Path(path)
    if (path / "results.parquet").is_file():
        return _sweep_report(path)
    if (path / METRICS_FILE).is_file():
        return _run_report(path, episodes, evaluate_test, progress or (lambda _msg: None))
    raise FileNotFoundError(
        f"{str(path)!r} is neither a run directory (no {METRICS_FILE}) nor a sweep directory (no results.parquet)"
    )


def meta_test_line(result: EvalResult, source: str) -> str:
    """'Meta-test accuracy: 45.20% +- 1.10% over 600 episodes (test.json)': one name, no repeated prefix."""
    pct = result.metric == "acc"
    m, h = result.mean, result.ci95
    value = f"{100 * m:.2f}% +- {100 * h:.2f}%" if pct else f"{m:.4f} +- {h:.4f}"
    return f"Meta-test {NAMES[result.metric]}: {value} (95% CI) over {result.episodes} episodes ({source})"


def read_test(run_dir: Path) -> EvalResult | None:
    """The run's own final meta-test (test.json), or None when the run did not get that far."""
    path = run_dir / "test.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return EvalResult(d["metric"], d["mean"], d["ci95"], d["episodes"], d.get("curve", []))


def _evaluate(say, what: str, learner, params, distribution, **kw) -> EvalResult:
    say(f"{what}: {kw['episodes']} test episodes")
    advance = phase(say, f"{what}: episode", kw["episodes"], "episode")
    result = evaluate(learner, params, distribution, progress=advance, chunk=10, **kw)
    end_phase(say)
    return result


def _run_report(run_dir: Path, episodes: int, evaluate_test: bool, say) -> list[Path]:
    from metaserve.api import load
    from metaserve.experiment import build_distribution
    from metaserve.store.rundir import read_run_config

    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    config, df = read_run_config(run_dir), read_metrics(run_dir)
    say(f"report of {run_dir}: learning curves from {METRICS_FILE}")
    files = [save(learning_curves(df), out / "learning_curves.png")]
    state = latest_good_state(run_dir)
    lines = [
        f"# Report: run `{config.name}`",
        "",
        f"`{run_dir}`: {config.algorithm.name} on {config.task.name}, "
        f"{int(df['step'].iloc[-1])} of {config.train.steps} meta-steps, teacher `{config.curriculum.teacher}`.",
        "",
    ]
    last = df.iloc[-1]
    shown = [
        c
        for c in ("loss", "loss_pre", "acc", "val_loss", "val_loss_pre", "val_acc", "val_acc_pre", "teacher_loss")
        if c in df
    ]
    lines += [f"## Last logged step ({int(last['step'])})", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {c.replace('acc', 'accuracy')} | {last[c]:.4f} |" for c in shown] + [""]
    test = read_test(run_dir)
    if state is not None:
        say(f"loading data: {config.task.name}")
        model = load(run_dir, "cpu")
        learner, params, distribution = model.learner, model.params, build_distribution(config)
        kw = dict(episodes=episodes, steps=config.eval.inner_steps)
        before = _evaluate(
            say, "adaptation before meta-training", learner, learner.initial_params(), distribution, **kw
        )
        after = _evaluate(say, "adaptation after meta-training", learner, params, distribution, **kw)
        files.append(save(adaptation_curves(before, after, model.step), out / "adaptation.png"))
        keys = ["loss"] + (["acc"] if "acc" in after.curve[0] else [])
        lines += [
            f"## Adaptation on {episodes} test tasks (full task space)",
            "",
            "| inner step | " + " | ".join(f"{NAMES[k]} before | {NAMES[k]} after" for k in keys) + " |",
            "| --- |" + " --- | --- |" * len(keys),
        ]
        lines += [
            f"| {b['inner_step']} | " + " | ".join(f"{b[k]:.4f} | {a[k]:.4f}" for k in keys) + " |"
            for b, a in zip(before.curve, after.curve)
        ]
        lines.append("")
        if evaluate_test:
            kw["episodes"] = config.eval.episodes
            test_now = _evaluate(say, "meta-test (re-evaluated)", learner, params, distribution, **kw)
            lines.append(meta_test_line(test_now, f"re-evaluated at step {model.step}"))
        fit = _sinusoid_fit(config, learner, distribution, params)
        if fit is not None:
            files.append(save(fit, out / "sinusoid_fit.png"))
    lines.append(
        meta_test_line(test, "the run's test.json")
        if test is not None
        else "No test.json: the run has not finished its meta-test (`metaserve report --evaluate` re-evaluates)."
    )
    lines.append("")
    omega = omega_trajectory(df)
    if omega is not None:
        files.append(save(omega, out / "omega.png"))
        cols = [c for c in df if c.startswith("omega_")]
        lines += [
            "## Curriculum",
            "",
            "Final omega: " + ", ".join(f"{c.removeprefix('omega_')}={last[c]:g}" for c in cols),
            "",
        ]
    lines += ["## Plots", ""] + [f"![{f.stem}]({f.name})" for f in files]
    files.append(_write(out / "summary.md", lines))
    return files


def _sinusoid_fit(config, learner, distribution, params) -> Figure | None:
    """The fit plot for a plain sinusoid run of a gradient-based learner; the task's A and phase are drawn
    from the test task space with a generator seeded by the run's seed (reproducible, independent of training)."""
    algo = learner.algorithm
    if (
        config.task.name != "sinusoid"
        or getattr(distribution, "oracle", False)
        or config.entry.evaluation != "inner-loop"
    ):
        return None
    rng = np.random.default_rng(config.seed)
    amplitude, phase_ = rng.uniform(*distribution.space.amplitude), rng.uniform(*distribution.space.phase)
    task = distribution.task_for(rng, amplitude, phase_).to(learner.device, learner.dtype)
    return sinusoid_fit(algo, params, task, amplitude, phase_, distribution.x_range, algo.inner_lr)


def _sweep_report(sweep_dir: Path) -> list[Path]:
    from metaserve.tuning.results import format_table
    from metaserve.tuning.run import load_sweep_dir

    sweep = load_sweep_dir(sweep_dir)
    results = pd.read_parquet(sweep_dir / "results.parquet")
    out = sweep_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    keys = [
        k for k in ("base", *sweep.space, *sweep.mutations) if k in results and (k != "base" or len(sweep.bases) > 1)
    ]
    files = [
        save(sweep_comparison(results, sweep.metric, keys), out / "sweep.png"),
        save(sweep_curves(results, sweep.metric, keys), out / "sweep_curves.png"),
    ]
    best = sorted(p.name for p in sweep_dir.glob("best_config*.yaml"))
    lines = [
        f"# Report: sweep `{sweep.name}`",
        "",
        f"`{sweep_dir}`: {len(results)} trials, metric `{sweep.metric}` ({sweep.mode}), "
        f"scheduler `{sweep.scheduler.name}`; best config: {', '.join(best) or 'none'}.",
        "",
        "```",
        format_table(results, sweep),
        "```",
        "",
        "## Plots",
        "",
    ] + [f"![{f.stem}]({f.name})" for f in files]
    files.append(_write(out / "summary.md", lines))
    return files


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
