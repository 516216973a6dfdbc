"""Requests, responses and limits of the few-shot service, and the checks that turn a JSON body
into tensors for one served model (every failure is a `RequestError`: an HTTP status plus one
sentence naming the field and what is allowed)."""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metaserve.config import Config, ImageTaskConfig, task_kind


class RequestError(Exception):
    """A request the service refuses: `status` (4xx) and a one-sentence `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Limits(BaseModel):
    """Caps that keep one request from holding a replica for long (set by `metaserve serve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(100, ge=0)  # adaptation steps a request may ask for
    max_examples: int = Field(1000, ge=1)  # support + query examples in one request
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # HTTP body size


class PredictRequest(BaseModel):
    """A few-shot task: labelled support set, query inputs, optional steps and model id."""

    model_config = ConfigDict(extra="forbid")

    support_x: list[Any]  # nested arrays [n, *input_shape], or base64 PNG strings for image models
    support_y: list[Any]  # regression: n values (or [n, 1]); classification: n class indices
    query_x: list[Any]
    steps: int | None = None  # inner-loop algorithms only; default the run's eval_inner_steps
    model: str | None = None  # required when several runs are served


class ModelInfo(BaseModel):
    """What `/models` lists for one served run (from its config and the algorithm registry)."""

    id: str
    algorithm: str
    evaluation: str  # inner-loop, closed-form or family (the registry's evaluation protocol)
    task: str
    kind: str  # regression or classification
    input_shape: list[int]
    ways: int | None  # classes the run was trained for (classification)
    shots: int
    default_steps: int | None  # inner-loop steps when a request gives none (None: no inner loop)
    step: int  # training step of the checkpoint served
    dtype: str


def model_info(model_id: str, config: Config, algorithm: Any, step: int) -> ModelInfo:
    """The listing entry of a loaded run."""
    task = config.task
    image = isinstance(task, ImageTaskConfig)
    shape = [task.channels, task.image_size, task.image_size] if image else [3 if getattr(task, "oracle", False) else 1]
    entry = config.entry
    steps = None if entry.evaluation == "closed-form" else _default_steps(algorithm)
    return ModelInfo(
        id=model_id,
        algorithm=entry.name,
        evaluation=entry.evaluation,
        task=task.name,
        kind=task_kind(task),
        input_shape=shape,
        ways=task.ways if image else None,
        shots=task.shots,
        default_steps=steps,
        step=step,
        dtype=config.train.dtype,
    )


def _default_steps(algorithm: Any) -> int | None:
    for name in ("eval_inner_steps", "finetune_steps"):
        if hasattr(algorithm, name):
            return int(getattr(algorithm, name))
    return None


def parse_request(data: Any) -> PredictRequest:
    """The request model of a decoded JSON body; a 422 naming the first bad field otherwise."""
    if not isinstance(data, dict):
        raise RequestError(
            422,
            f"the body must be a JSON object with support_x, support_y and query_x, got a JSON {type(data).__name__}",
        )
    try:
        return PredictRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise RequestError(
                422, f"{field} is not a request field; allowed: support_x, support_y, query_x, steps, model"
            ) from None
        raise RequestError(422, f"{field}: {first['msg'].lower()}") from None


@dataclass
class Job:
    """One validated request as tensors for one model: what batching groups and runs."""

    model: str
    steps: int | None
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor


def to_job(req: PredictRequest, info: ModelInfo, limits: Limits, dtype: torch.dtype) -> Job:
    """Check a request against its model and the limits; the tensors `MetaModel.adapt/predict` take."""
    n, q = len(req.support_x), len(req.query_x)
    for field, count in (("support_x", n), ("query_x", q)):
        if count == 0:
            raise RequestError(422, f"{field} is empty; give at least one example")
    if n + q > limits.max_examples:
        raise RequestError(
            413, f"support_x and query_x hold {n + q} examples; at most {limits.max_examples} are allowed per request"
        )
    sx, qx = inputs("support_x", req.support_x, info), inputs("query_x", req.query_x, info)
    sy = labels(req.support_y, n, info)
    y = torch.from_numpy(sy).to(dtype) if info.kind == "regression" else torch.from_numpy(sy)
    return Job(
        info.id, check_steps(req.steps, info, limits), torch.from_numpy(sx).to(dtype), y, torch.from_numpy(qx).to(dtype)
    )


def check_steps(steps: int | None, info: ModelInfo, limits: Limits) -> int | None:
    """The adaptation steps to run: the run's default, or the request's within [0, max_steps]."""
    if info.default_steps is None:
        if steps is not None:
            raise RequestError(
                422, f"steps={steps} is not allowed: {info.algorithm} adapts in closed form (leave steps out)"
            )
        return None
    if steps is None:
        return info.default_steps
    if not 0 <= steps <= limits.max_steps:
        raise RequestError(422, f"steps={steps} is outside the allowed range 0..{limits.max_steps}")
    return steps


def inputs(field: str, rows: list[Any], info: ModelInfo) -> np.ndarray:
    """[n, *input_shape] float64 from nested numbers or base64 PNGs (image models), all finite."""
    if all(isinstance(r, str) for r in rows):
        if len(info.input_shape) != 3:
            raise RequestError(
                422,
                f"{field} holds strings, but model {info.id!r} takes numbers of shape {info.input_shape}, not images",
            )
        x = np.stack([decode_png(field, i, r, info.input_shape) for i, r in enumerate(rows)])
    else:
        x = numeric(field, rows)
    want = [len(rows), *info.input_shape]
    if list(x.shape) != want:
        raise RequestError(
            422,
            f"{field} has shape {list(x.shape)}, but model {info.id!r} takes [n, "
            f"{', '.join(map(str, info.input_shape))}] ({want} here)",
        )
    if not np.isfinite(x).all():
        raise RequestError(422, f"{field} holds NaN or infinite values; only finite numbers are allowed")
    return x


def numeric(field: str, rows: list[Any]) -> np.ndarray:
    """A rectangular array of JSON numbers (booleans, strings and nulls are refused)."""
    try:
        x = np.asarray(rows)
    except ValueError:
        x = None
    if x is None or x.dtype.kind not in "iuf":
        raise RequestError(
            422, f"{field} must be a rectangular nested array of numbers (or base64 PNG strings for image models)"
        )
    return x.astype(np.float64)


def decode_png(field: str, i: int, text: str, shape: list[int]) -> np.ndarray:
    """One base64 PNG as [C, H, W] in [0, 1], the way the image tasks load images (uint8 / 255)."""
    from PIL import Image

    c, h, w = shape
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        image.load()
    except (binascii.Error, OSError, ValueError):
        raise RequestError(422, f"{field}[{i}] is not a base64-encoded PNG image") from None
    if image.size != (w, h):
        raise RequestError(422, f"{field}[{i}] is {image.size[0]}x{image.size[1]} pixels; the model takes {w}x{h}")
    pixels = np.asarray(image.convert("L" if c == 1 else "RGB"), dtype=np.float64) / 255.0
    return pixels[None] if c == 1 else pixels.transpose(2, 0, 1)


def labels(rows: list[Any], n: int, info: ModelInfo) -> np.ndarray:
    """Regression targets [n, 1] (finite) or class indices [n] in [0, ways) (each class present for
    closed-form learners, whose prototypes need every class)."""
    if len(rows) != n:
        raise RequestError(422, f"support_y has {len(rows)} entries but support_x has {n}; give one label per example")
    if info.kind == "regression":
        y = numeric("support_y", rows).reshape(n, -1)
        if y.shape[1] != 1:
            raise RequestError(422, f"support_y must hold one number per example, got shape {list(y.shape)}")
        if not np.isfinite(y).all():
            raise RequestError(422, "support_y holds NaN or infinite values; only finite numbers are allowed")
        return y
    ways = info.ways or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in rows):
        raise RequestError(422, f"support_y must hold integer class indices 0..{ways - 1}")
    y = np.asarray(rows, dtype=np.int64)
    bad = y[(y < 0) | (y >= ways)]
    if bad.size:
        raise RequestError(
            422, f"support_y holds label {int(bad[0])}; model {info.id!r} serves {ways} ways, labels 0..{ways - 1}"
        )
    if info.evaluation == "closed-form" and len(set(y.tolist())) < ways:
        missing = sorted(set(range(ways)) - set(y.tolist()))
        raise RequestError(
            422,
            f"support_y lacks class {missing[0]}; {info.algorithm} needs every class 0..{ways - 1} in the support set",
        )
    return y


def response(
    info: ModelInfo, out: torch.Tensor, steps: int | None, batch: int, compute_ms: float, total_ms: float
) -> dict[str, Any]:
    """The JSON answer: regression values, or class indices and probabilities; steps and timing."""
    body: dict[str, Any] = {
        "model": info.id,
        "steps": steps,
        "batch_size": batch,
        "timing_ms": {"compute": round(compute_ms, 3), "total": round(total_ms, 3)},
    }
    if info.kind == "regression":
        body["predictions"] = out.reshape(len(out), -1)[:, 0].tolist()
    else:
        body["predictions"] = out.argmax(-1).tolist()
        body["probabilities"] = torch.softmax(out.double(), -1).tolist()
        body["logits"] = out.tolist()
    if any(not math.isfinite(v) for v in out.reshape(-1).tolist()):
        body["warning"] = "some outputs are not finite"
    return body
