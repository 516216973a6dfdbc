"""The Ray Serve application: one deployment, a FastAPI ingress, every served run in each replica.

Layout (chosen over one deployment per run and over Serve model multiplexing; BENCHMARKS-serve.md):
each replica loads all runs given (a few MB of weights each) and runs one `@serve.batch` queue;
batching groups the queued requests by model, steps and shapes (batching.py). Requests therefore
take one hop (HTTP proxy -> replica) instead of two (proxy -> ingress -> per-run deployment), and a
run never waits for a replica to load it, which multiplexing's per-replica LRU would cost on a miss.

Endpoints: POST /predict (a few-shot task as JSON, schema.py), GET /models, GET /health.
Bad requests get a 4xx with {"error": one sentence}; the replica keeps serving.
"""
# No `from __future__ import annotations` here: FastAPI must see `Request` as a class, not a string.

import json
import time
from pathlib import Path
from typing import Any

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from metaserve.serve.batching import Result, Served, run_batch
from metaserve.serve.schema import Job, Limits, ModelInfo, RequestError, model_info, parse_request, response, to_job

api = FastAPI(title="metaserve", description="Adapt-on-request few-shot prediction")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes, whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {declared} bytes; at most {limit} bytes are allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body exceeds {limit} bytes, the most allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({err.__class__.__name__} at byte "
                                f"{getattr(err, 'pos', 0)}); send a JSON object") from None


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class FewShotService:
    """Loads the runs and answers few-shot requests, batching concurrent ones."""

    def __init__(self, runs: dict[str, str], limits: dict[str, int], max_batch: int = 32,
                 batch_wait_ms: float = 2.0, threads: int = 1):
        from metaserve.api import load

        torch.set_num_threads(threads)
        device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"
        self.limits = Limits(**limits)
        self.models = {mid: Served(load(path, device)) for mid, path in runs.items()}
        self.infos = {mid: model_info(mid, s.model.config, s.model.learner.algorithm, s.model.step)
                      for mid, s in self.models.items()}
        self.device = device
        self.vectorize = max_batch > 1
        self.compute.set_max_batch_size(max_batch)
        self.compute.set_batch_wait_timeout_s(batch_wait_ms / 1e3)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def compute(self, jobs: list[Job]) -> list[Result]:
        return run_batch(self.models, jobs, self.vectorize)

    @api.get("/health")
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": len(self.models), "device": self.device}

    @api.get("/models")
    def list_models(self) -> dict[str, Any]:
        return {"models": [i.model_dump() for i in self.infos.values()], "limits": self.limits.model_dump()}

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            req = parse_request(decode_json(await read_body(request, self.limits.max_body_bytes)))
            info = self.pick(req.model)
            job = to_job(req, info, self.limits, self.models[info.id].model.learner.dtype)
        except RequestError as err:
            return error(err.status, err.message)
        result = await self.compute(job)
        body = response(info, result.output, result.steps, result.group_size, result.compute_ms,
                        (time.perf_counter() - t0) * 1e3)
        return JSONResponse(body)

    def pick(self, model: str | None) -> ModelInfo:
        """The served model a request names (or the only one)."""
        served = ", ".join(self.infos)
        if model is None:
            if len(self.infos) > 1:
                raise RequestError(422, f"model is required when several runs are served; one of: {served}")
            return next(iter(self.infos.values()))
        if model not in self.infos:
            raise RequestError(404, f"model={model!r} is not served; served models: {served}")
        return self.infos[model]


def run_ids(run_dirs: list[str]) -> dict[str, str]:
    """Model id (the run directory's name) -> absolute path; two runs of one name are an error."""
    ids: dict[str, str] = {}
    for run in run_dirs:
        path = Path(run).resolve()
        if not path.exists():
            raise FileNotFoundError(f"run directory {run!r} does not exist")
        if path.name in ids:
            raise ValueError(f"two runs are named {path.name!r}; serve runs whose directory names differ")
        ids[path.name] = str(path)
    return ids


def build(run_dirs: list[str], *, replicas: int = 1, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0,
          limits: Limits | None = None, max_batch: int = 32, batch_wait_ms: float = 2.0) -> serve.Application:
    """The Serve application for some runs (`metaserve serve` and `app_builder` call this)."""
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be at least 1")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be at least 1 (1 turns batching off)")
    runs = run_ids(run_dirs)
    options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    threads = max(1, int(cpus_per_replica))
    return FewShotService.options(num_replicas=replicas, ray_actor_options=options,
                                  max_ongoing_requests=max(256, 4 * max_batch)).bind(
        runs, (limits or Limits()).model_dump(), max_batch, batch_wait_ms, threads)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point of a Serve config file (cluster/serve.yaml): `args` as in `build`, with `runs`."""
    args = dict(args)
    runs = args.pop("runs")
    limits = Limits(**{k: args.pop(k) for k in list(args) if k in Limits.model_fields})
    return build(list(runs), limits=limits, **args)
