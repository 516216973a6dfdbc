"""`metaserve report RUN_DIR|SWEEP_DIR`: PNG plots and a short markdown summary in `<dir>/report/`.

A run: learning curves (meta-train and meta-val query loss and accuracy, before and after
adaptation, vs meta-step), adaptation curves (query loss vs inner step before and after
meta-training on held-out tasks of the full, hardest task space: the protocol of Fig. 1 of Shevchuk,
"Teaching Your MAML") and, under a curriculum teacher, the omega trajectory. A sweep: the metric of
every trial config and the trials' curves. Beside each PNG a CSV holds the data read back from the
drawn figure (panel, line, x, y), so the plotted numbers can be checked and re-plotted.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and Ray nodes
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from metaserve.evaluation import EvalResult, evaluate  # noqa: E402
from metaserve.store.checkpoint import latest_good_state  # noqa: E402
from metaserve.store.metrics import METRICS_FILE, read_metrics  # noqa: E402

REPORT_DIR = "report"
CURVES = {  # column -> legend label
    "loss": "meta-train, after adaptation", "loss_pre": "meta-train, before adaptation",
    "val_loss": "meta-val, after adaptation", "val_loss_pre": "meta-val, before adaptation",
}


def learning_curves(df: pd.DataFrame) -> Figure:
    """Query loss (and accuracy, for classification) vs meta-step, one line per logged column."""
    panels = [("query loss", list(CURVES))] + ([("query accuracy", [c.replace("loss", "acc") for c in CURVES])] if "acc" in df else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, columns) in zip(axes[0], panels):
        for col in (c for c in columns if c in df):
            ax.plot(df["step"], df[col], label=CURVES[col.replace("acc", "loss")], marker="." if len(df) < 30 else None)
        ax.set(title=title, xlabel="meta-step", ylabel=title.split()[-1])
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def adaptation_curves(before: EvalResult, after: EvalResult, step: int) -> Figure:
    """Query loss (and accuracy) vs inner step on held-out tasks, before and after meta-training."""
    keys = ["loss"] + (["acc"] if "acc" in after.curve[0] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for result, label in ((before, "before meta-training"), (after, f"after meta-training (step {step})")):
            ax.plot([r["inner_step"] for r in result.curve], [r[key] for r in result.curve], marker="o", label=label)
        title = f"query {'loss' if key == 'loss' else 'accuracy'}, {after.episodes} test tasks"
        ax.set(title=title, xlabel="inner step", ylabel=key)
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
        ax.legend(fontsize=8)
    ax = axes[0][-1]
    ax.plot(df["step"], df["teacher_loss"], marker=".", label="teacher meta-val loss (on omega)")
    if "val_loss" in df:
        ax.plot(df["step"], df["val_loss"], label="meta-val loss (full task space)")
    ax.set(title="what the teacher sees", xlabel="meta-step", ylabel="loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_comparison(results: pd.DataFrame, metric: str, keys: list[str]) -> Figure:
    """The metric at each trial's last report, one point per trial config (best first)."""
    column = f"{metric}_last"
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(results) + 2), 4.5))
    labels = [", ".join(f"{k.split('.')[-1]}={_short(r[k])}" for k in keys) for _, r in results.iterrows()]
    ax.plot(range(len(results)), results[column], marker="o", linestyle="none", label=column)
    ax.set_xticks(range(len(results)), labels, rotation=60, ha="right", fontsize=7)
    ax.set(title=f"sweep: {metric} per trial", ylabel=metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_curves(results: pd.DataFrame, metric: str) -> Figure:
    """Each trial's logged `metric` vs meta-step, from its run directory."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in results.iterrows():
        path = Path(r["run_dir"]) / METRICS_FILE
        if path.is_file():
            df = pd.read_parquet(path)
            if metric in df:
                ax.plot(df["step"], df[metric], marker=".", label=str(r["trial_id"]))
    ax.set(title=f"sweep: {metric} per trial", xlabel="meta-step", ylabel=metric)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def figure_data(fig: Figure) -> pd.DataFrame:
    """Every plotted line of a figure as rows (panel, line, x, y), read back from the artists."""
    rows = []
    for ax in fig.axes:
        for line in ax.get_lines():
            rows += [{"panel": ax.get_title(), "line": line.get_label(), "x": float(x), "y": float(y)}
                     for x, y in zip(line.get_xdata(), line.get_ydata())]
    return pd.DataFrame(rows, columns=["panel", "line", "x", "y"])


def save(fig: Figure, path: Path) -> Path:
    """Write `path` (.png) and the figure's data beside it (.csv), then free the figure."""
    fig.savefig(path, dpi=110)
    figure_data(fig).to_csv(path.with_suffix(".csv"), index=False)
    plt.close(fig)
    return path


def report(path: str | Path, *, episodes: int = 100) -> list[Path]:
    """Plots and summary.md for a run or a sweep directory; returns the files written."""
    path = Path(path)
    if (path / "results.parquet").is_file():
        return _sweep_report(path)
    if (path / METRICS_FILE).is_file():
        return _run_report(path, episodes)
    raise FileNotFoundError(f"{str(path)!r} is neither a run directory (no {METRICS_FILE}) nor a sweep directory (no results.parquet)")


def _run_report(run_dir: Path, episodes: int) -> list[Path]:
    from metaserve.api import load
    from metaserve.experiment import build_distribution
    from metaserve.store.rundir import read_run_config

    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    config, df = read_run_config(run_dir), read_metrics(run_dir)
    files = [save(learning_curves(df), out / "learning_curves.png")]
    lines = [f"# Report: run `{config.name}`", "", f"`{run_dir}`: {config.algorithm.name} on {config.task.name}, "
             f"{int(df['step'].iloc[-1])} of {config.train.steps} meta-steps, teacher `{config.curriculum.teacher}`.", ""]
    last = df.iloc[-1]
    shown = [c for c in ("loss", "loss_pre", "acc", "val_loss", "val_loss_pre", "val_acc", "val_acc_pre", "teacher_loss") if c in df]
    lines += [f"## Last logged step ({int(last['step'])})", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {c} | {last[c]:.4f} |" for c in shown] + [""]
    if latest_good_state(run_dir) is not None:
        model = load(run_dir, "cpu")
        learner, distribution = model.learner, build_distribution(config)
        kw = dict(episodes=episodes, steps=config.eval.inner_steps)
        before = evaluate(learner, learner.initial_params(), distribution, **kw)
        after = evaluate(learner, model.params, distribution, **kw)
        files.append(save(adaptation_curves(before, after, model.step), out / "adaptation.png"))
        keys = ["loss"] + (["acc"] if "acc" in after.curve[0] else [])
        lines += [f"## Adaptation on {episodes} test tasks (full task space)", "",
                  "| inner step | " + " | ".join(f"{k} before | {k} after" for k in keys) + " |",
                  "| --- |" + " --- | --- |" * len(keys)]
        lines += [f"| {b['inner_step']} | " + " | ".join(f"{b[k]:.4f} | {a[k]:.4f}" for k in keys) + " |"
                  for b, a in zip(before.curve, after.curve)]
        lines += ["", f"Meta-test ({after.metric}): {after}", ""]
    omega = omega_trajectory(df)
    if omega is not None:
        files.append(save(omega, out / "omega.png"))
        cols = [c for c in df if c.startswith("omega_")]
        lines += ["## Curriculum", "", "Final omega: " + ", ".join(f"{c.removeprefix('omega_')}={last[c]:g}" for c in cols), ""]
    lines += ["## Plots", ""] + [f"![{f.stem}]({f.name})" for f in files]
    files.append(_write(out / "summary.md", lines))
    return files


def _sweep_report(sweep_dir: Path) -> list[Path]:
    from metaserve.tuning.results import format_table
    from metaserve.tuning.run import load_sweep_dir

    sweep = load_sweep_dir(sweep_dir)
    results = pd.read_parquet(sweep_dir / "results.parquet")
    out = sweep_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    keys = [k for k in ("base", *sweep.space, *sweep.mutations) if k in results and (k != "base" or len(sweep.bases) > 1)]
    files = [save(sweep_comparison(results, sweep.metric, keys), out / "sweep.png"),
             save(sweep_curves(results, sweep.metric), out / "sweep_curves.png")]
    best = sorted(p.name for p in sweep_dir.glob("best_config*.yaml"))
    lines = [f"# Report: sweep `{sweep.name}`", "", f"`{sweep_dir}`: {len(results)} trials, metric `{sweep.metric}` ({sweep.mode}), "
             f"scheduler `{sweep.scheduler.name}`; best config: {', '.join(best) or 'none'}.", "", "```", format_table(results, sweep), "```", "",
             "## Plots", ""] + [f"![{f.stem}]({f.name})" for f in files]
    files.append(_write(out / "summary.md", lines))
    return files


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
