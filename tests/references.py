"""Independent numerical references shared by the maths tests (no metaserve code inside)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import torch
from tensorboardX.proto import event_pb2

Params = dict[str, torch.Tensor]


def finite_differences(f: Callable[[Params], object], theta: Params, eps: float = 1e-6) -> Params:
    """Central differences of a scalar function of a parameter dict, one entry at a time."""
    out = {}
    for name, value in theta.items():
        g = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {n: t.clone() for n, t in theta.items()}
            minus = {n: t.clone() for n, t in theta.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            g.view(-1)[i] = (float(f(plus)) - float(f(minus))) / (2 * eps)
        out[name] = g
    return out


def assert_params_close(a: Params, b: Params, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def relative_gap(a: Params, b: Params) -> float:
    """||a - b|| / ||b|| over all entries."""
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5
    den = sum(float((b[k] ** 2).sum()) for k in b) ** 0.5
    return num / den


def tensorboard_events(path) -> list:
    """The Event records of one TensorBoard event file (TFRecord framing: length, crc, record, crc)."""
    data, pos, events = Path(path).read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return events


def tensorboard_scalars(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} as TensorBoard shows a directory of event files: files in name (time)
    order, and a START session log at step s drops what earlier files logged at steps >= s."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in tensorboard_events(path):
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for steps in scalars.values():
                    for s in [s for s in steps if s >= event.step]:
                        del steps[s]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
