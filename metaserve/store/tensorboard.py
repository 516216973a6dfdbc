"""TensorBoard events of a run: every logged metrics row as scalars, next to metrics.parquet.

`tensorboard --logdir <output_dir>` then shows every run (and a sweep's trials, which Tune's own
TensorBoard logger writes from the same rows). metrics.parquet stays the record; the events are a view.
"""

from __future__ import annotations

import math
import uuid
from numbers import Real
from pathlib import Path

from tensorboardX import SummaryWriter

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """Writes metrics rows to `<run_dir>/tensorboard/`, one scalar per numeric column at the row's step."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        # A run resumed at its checkpoint of `start_step` logs the steps after it again: TensorBoard
        # drops the earlier events from start_step + 1 on (purge_step), so each step shows once.
        # Event files are named by the second they were opened: the suffix keeps a resume within the
        # same second from overwriting the previous file, and sorts after it.
        self._writer = SummaryWriter(
            str(Path(run_dir) / TENSORBOARD_DIR),
            purge_step=start_step + 1 if start_step else None,
            flush_secs=10,
            filename_suffix=f".step{start_step:08d}.{uuid.uuid4().hex[:8]}",
        )

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for name, value in row.items():
            if name != "step" and isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(name, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
