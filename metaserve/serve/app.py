"""The Ray Serve application: a FastAPI ingress over the served runs, in one of two layouts.

`shared` (the default): one deployment whose replicas each load every run given (a few MB of weights
each) and run one `@serve.batch` queue; batching groups the queued requests by model, steps and
shapes (batching.py). A request takes one hop (HTTP proxy -> replica). `per-run`: a `Router` ingress
forwards each request to its run's own deployment: two hops, but each run scales on its own. Measured
(BENCHMARKS.md, serve section, 2 runs, 32 clients, 2 cores): shared 114 req/s, per-run 73. Serve model
multiplexing was not chosen: it also takes two hops and reloads a run on a replica's cache miss.

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
        raise RequestError(
            400,
            f"the body is not valid JSON ({err.__class__.__name__} at byte "
            f"{getattr(err, 'pos', 0)}); send a JSON object",
        ) from None


class RunService:
    """Loads runs and answers decoded few-shot requests, batching concurrent ones (no HTTP: the
    `per-run` layout deploys it behind the `Router`; `FewShotService` adds the HTTP routes)."""

    def __init__(
        self,
        runs: dict[str, str],
        limits: dict[str, int],
        max_batch: int = 32,
        batch_wait_ms: float = 2.0,
        threads: int = 1,
    ):
        from metaserve.api import load

        torch.set_num_threads(threads)
        device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"
        self.limits = Limits(**limits)
        self.models = {mid: Served(load(path, device)) for mid, path in runs.items()}
        self.infos = {
            mid: model_info(mid, s.model.config, s.model.learner.algorithm, s.model.step)
            for mid, s in self.models.items()
        }
        self.device = device
        self.vectorize = max_batch > 1
        self.compute.set_max_batch_size(max_batch)
        self.compute.set_batch_wait_timeout_s(batch_wait_ms / 1e3)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def compute(self, jobs: list[Job]) -> list[Result]:
        return run_batch(self.models, jobs, self.vectorize)

    def listing(self) -> dict[str, Any]:
        """What /models answers: every served run's listing entry and the request limits."""
        return {"models": [i.model_dump() for i in self.infos.values()], "limits": self.limits.model_dump()}

    async def answer(self, data: Any, t0: float | None = None) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for a decoded request (the HTTP route, and the per-run `Router`, call this)."""
        t0 = time.perf_counter() if t0 is None else t0
        try:
            req = parse_request(data)
            info = self.pick(req.model)
            job = to_job(req, info, self.limits, self.models[info.id].model.learner.dtype)
        except RequestError as err:
            return err.status, {"error": err.message}
        result = await self.compute(job)
        return 200, response(
            info, result.output, result.steps, result.group_size, result.compute_ms, (time.perf_counter() - t0) * 1e3
        )

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


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class FewShotService(RunService):
    """The `shared` layout: the runs and the HTTP routes in one deployment (the default)."""

    @api.get("/health")
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": len(self.models), "device": self.device}

    @api.get("/models")
    def list_models(self) -> dict[str, Any]:
        return self.listing()

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            data = decode_json(await read_body(request, self.limits.max_body_bytes))
        except RequestError as err:
            return error(err.status, err.message)
        status, body = await self.answer(data, t0)
        return JSONResponse(body, status_code=status)


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


router_api = FastAPI(title="metaserve", description="Adapt-on-request few-shot prediction (one deployment per run)")


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(router_api)
class Router:
    """The `per-run` layout's ingress: reads the body, forwards it to the named run's deployment."""

    def __init__(self, services: dict[str, Any], max_body_bytes: int):
        self.services = services
        self.max_body_bytes = max_body_bytes

    @router_api.get("/health")
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": len(self.services)}

    @router_api.get("/models")
    async def list_models(self) -> dict[str, Any]:
        listed = [await h.listing.remote() for h in self.services.values()]
        return {"models": [m for part in listed for m in part["models"]], "limits": listed[0]["limits"]}

    @router_api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            data = decode_json(await read_body(request, self.max_body_bytes))
            model = data.get("model") if isinstance(data, dict) else None
            served = ", ".join(self.services)
            if model is None and len(self.services) > 1:
                raise RequestError(422, f"model is required when several runs are served; one of: {served}")
            if model is not None and model not in self.services:
                raise RequestError(404, f"model={model!r} is not served; served models: {served}")
        except RequestError as err:
            return error(err.status, err.message)
        handle = self.services[model] if model is not None else next(iter(self.services.values()))
        status, body = await handle.answer.remote(data, None)
        body.get("timing_ms", {})["total"] = round((time.perf_counter() - t0) * 1e3, 3)
        return JSONResponse(body, status_code=status)


def build(
    run_dirs: list[str],
    *,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    limits: Limits | None = None,
    max_batch: int = 32,
    batch_wait_ms: float = 2.0,
    layout: str = "shared",
    max_replicas: int | None = None,
) -> serve.Application:
    """The Serve application for some runs (`metaserve serve` and `app_builder` call this).

    layout='shared': one deployment, every run in each replica (the default, see the module docstring);
    'per-run': a `Router` ingress plus one deployment of `replicas` replicas per run.
    `max_replicas` turns on Serve autoscaling between `replicas` and it (target: a full batch per replica).
    """
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be at least 1")
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch} must be at least 1 (1 turns batching off)")
    if layout not in ("shared", "per-run"):
        raise ValueError(f"layout={layout!r} must be 'shared' or 'per-run'")
    if max_replicas is not None and max_replicas < replicas:
        raise ValueError(f"max_replicas={max_replicas} must be at least replicas={replicas}")
    runs = run_ids(run_dirs)
    limits = limits or Limits()
    scale: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None:
        scale = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": max_batch,
            }
        }
    options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    threads = max(1, int(cpus_per_replica))

    def service(cls: Any, name: str, part: dict[str, str]) -> serve.Application:
        return cls.options(
            name=name, **scale, ray_actor_options=options, max_ongoing_requests=max(256, 4 * max_batch)
        ).bind(part, limits.model_dump(), max_batch, batch_wait_ms, threads)

    if layout == "shared":
        return service(FewShotService, "FewShotService", runs)
    plain = serve.deployment(RunService)  # Serve allows one FastAPI ingress per application: the Router
    services = {mid: service(plain, f"run-{i}", {mid: path}) for i, (mid, path) in enumerate(runs.items())}
    return Router.bind(services, limits.max_body_bytes)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point of a Serve config file (cluster/serve.yaml): `args` as in `build`, with `runs`."""
    args = dict(args)
    runs = args.pop("runs")
    limits = Limits(**{k: args.pop(k) for k in list(args) if k in Limits.model_fields})
    return build(list(runs), limits=limits, **args)
