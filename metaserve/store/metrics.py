"""metrics.parquet: one row per logged step, rewritten atomically so readers never see half a file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

METRICS_FILE = "metrics.parquet"


def write_metrics(run_dir: Path, rows: list[dict]) -> Path:
    """Replace metrics.parquet with `rows`."""
    path = Path(run_dir) / METRICS_FILE
    tmp = path.with_suffix(".parquet.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """The logged rows of a run."""
    return pd.read_parquet(Path(run_dir) / METRICS_FILE)


def read_rows(run_dir: Path) -> list[dict]:
    """The logged rows of a run as plain dicts ([] when none were written); NaN columns a row lacks are dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [
        {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
        for row in read_metrics(run_dir).to_dict("records")
    ]
