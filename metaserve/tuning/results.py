"""What a sweep leaves: results.parquet (one row per trial), best_config.yaml, and a printed table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from metaserve.config import config_to_dict
from metaserve.tuning.spec import Sweep
from metaserve.tuning.trainable import trial_config

RESULTS_FILE = "results.parquet"


def collect(grid, sweep: Sweep) -> pd.DataFrame:
    """One row per trial: its searched values, status, the metric at its last report and its best, test result."""
    rows = []
    keys = ["base", *sweep.space, *(k for k in sweep.mutations if k not in sweep.space)]
    for result in grid:
        history = result.metrics_dataframe
        series = (
            history[sweep.metric].dropna()
            if history is not None and sweep.metric in history
            else pd.Series(dtype=float)
        )
        best = (series.min() if sweep.mode == "min" else series.max()) if len(series) else math.nan
        metrics = result.metrics or {}
        trial_dir = Path(result.path)
        row = {
            "trial_id": metrics.get("trial_id", trial_dir.name),
            "status": "ERROR" if result.error else "TERMINATED",
            **{k: result.config.get(k) for k in keys},
            f"{sweep.metric}_last": float(series.iloc[-1]) if len(series) else math.nan,
            f"{sweep.metric}_best": float(best),
            "training_iteration": metrics.get("training_iteration", 0),
            "step": metrics.get("step", 0),
            "completed": bool(metrics.get("done_training", 0.0)),
            **{k: v for k, v in metrics.items() if k.startswith("test_")},
            "run_dir": str(trial_dir / "run"),
            "error": str(result.error).splitlines()[0] if result.error else "",
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    ascending = sweep.mode == "min"
    return df.sort_values(
        ["base", f"{sweep.metric}_last"], ascending=[True, ascending], na_position="last"
    ).reset_index(drop=True)


def best_rows(df: pd.DataFrame, sweep: Sweep) -> dict[str, pd.Series]:
    """The best trial of each base by the metric at its last report (errored trials excluded)."""
    out = {}
    column = f"{sweep.metric}_last"
    for base, group in df[df["status"] != "ERROR"].dropna(subset=[column]).groupby("base"):
        out[str(base)] = group.loc[group[column].idxmin() if sweep.mode == "min" else group[column].idxmax()]
    return out


def write_results(df: pd.DataFrame, sweep: Sweep, sweep_dir: Path) -> list[Path]:
    """results.parquet and the best config(s): best_config.yaml, or best_config-<base>.yaml per base when several."""
    sweep_dir = Path(sweep_dir)
    df.to_parquet(sweep_dir / RESULTS_FILE, index=False)
    written = [sweep_dir / RESULTS_FILE]
    for base, row in best_rows(df, sweep).items():
        params = {k: _plain(row[k]) for k in df.columns if k == "base" or k in sweep.space or k in sweep.mutations}
        config = config_to_dict(trial_config(sweep.bases, params))
        path = sweep_dir / ("best_config.yaml" if len(sweep.bases) == 1 else f"best_config-{base}.yaml")
        header = (
            f"# best of sweep {sweep.name!r} by {sweep.metric} ({sweep.mode}): trial {row['trial_id']}, "
            f"{sweep.metric}={row[f'{sweep.metric}_last']:.6g}\n"
        )
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


def format_table(df: pd.DataFrame, sweep: Sweep) -> str:
    """The results as an aligned text table, best first within each base."""
    keys = [k for k in ("base", *sweep.space, *sweep.mutations) if k in df.columns]
    keys = list(dict.fromkeys(keys if len(sweep.bases) > 1 else keys[1:]))
    cols = ["trial_id", *keys, f"{sweep.metric}_last", f"{sweep.metric}_best", "training_iteration", "status"]
    cells = [[_cell(v) for v in df[c]] for c in cols]
    widths = [max(len(c), *(len(x) for x in col)) if len(col) else len(c) for c, col in zip(cols, cells)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(col[i].ljust(w) for col, w in zip(cells, widths)) for i in range(len(df))]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _plain(v):
    """numpy scalars from a DataFrame back to plain Python values (for YAML and pydantic)."""
    return v.item() if hasattr(v, "item") else v
