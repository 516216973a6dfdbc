"""`metaserve serve`: one real Ray Serve instance on loopback for the module. Answers equal the
in-process API (`metaserve.load(run).adapt(x, y).predict(q)`) for a gradient-based, a metric and a
family learner; concurrent requests with different supports get their own answers; every class of
bad request gets its 4xx with a one-sentence error and the next good request still succeeds."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metaserve
from metaserve.api import as_config
from metaserve.cli import main
from metaserve.runtime.loop import train_loop
from metaserve.serve.client import Client, ServeError
from metaserve.serve.schema import Limits

TRAIN = {"steps": 2, "meta_batch": 2, "log_every": 2, "checkpoint_every": 2, "val_tasks": 2, "device": "cpu"}
LIMITS = Limits(max_steps=20, max_examples=200, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three tiny trained runs: maml on sinusoid, protonet on a 2-way image-folder task, maltml on families."""
    out = tmp_path_factory.mktemp("serve-runs")
    root = out / "data"
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / f"c{c}" / f"{i}.png")
    split = {"sources": ["images"]}
    image = {
        "name": "image-folder",
        "root": str(root),
        "ways": 2,
        "shots": 1,
        "query": 1,
        "image_size": 16,
        "cache_dir": str(root / "cache"),
        "train": split,
        "test": split,
    }
    sinusoid = {"name": "sinusoid", "shots": 3, "query": 3}
    configs = {
        "maml": {
            "task": sinusoid,
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": {"name": "maml", "inner_lr": 0.05, "eval_inner_steps": 3},
        },
        "protonet": {"task": image, "model": {"name": "conv4", "hidden": 4}, "algorithm": {"name": "protonet"}},
        "maltml": {
            "task": {**sinusoid, "name": "sinusoid-families", "tasks_per_family": 2},
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": {"name": "maltml"},
        },
    }
    dirs = {}
    for name, cfg in configs.items():
        config = as_config(
            {"name": name, "output_dir": str(out / name), **cfg, "train": TRAIN, "eval": {"episodes": 2}}
        )
        dirs[name] = Path(train_loop(config).run_dir)
    return dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(ray_session, runs):
    """The service on the session's Ray, all three runs in one deployment; shut down after the module."""
    from ray import serve

    from metaserve.serve.app import build

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build([str(p) for p in runs.values()], limits=LIMITS, max_batch=16, batch_wait_ms=20),
        name="metaserve-test",
        route_prefix="/",
    )
    yield Client(f"http://127.0.0.1:{port}"), port
    serve.shutdown()


def local(run: Path, sx, sy, qx, steps=None) -> torch.Tensor:
    model = metaserve.load(run)
    dt = model.learner.dtype
    y = torch.as_tensor(sy, dtype=dt) if isinstance(sy[0], (float, list)) else torch.as_tensor(sy)
    return model.adapt(torch.as_tensor(sx, dtype=dt), y, steps).predict(torch.as_tensor(qx, dtype=dt))


def sinusoid_task(rng: np.random.Generator, n: int = 4, q: int = 5):
    amp, phase = rng.uniform(0.5, 4), rng.uniform(0, np.pi)
    x = rng.uniform(-5, 5, (n + q, 1))
    return x[:n].tolist(), (amp * np.sin(x[:n] - phase)).tolist(), x[n:].tolist()


def image_task(rng: np.random.Generator, q: int = 3):
    sx = rng.uniform(0, 1, (2, 1, 16, 16)).round(3)
    return sx.tolist(), [1, 0], rng.uniform(0, 1, (q, 1, 16, 16)).round(3).tolist()


def test_models_are_listed_from_the_registry_and_config(service, runs):
    client, _ = service
    models = {m["id"]: m for m in client.models()}
    assert set(models) == {p.name for p in runs.values()}
    maml, proto = models[runs["maml"].name], models[runs["protonet"].name]
    assert (maml["algorithm"], maml["task"], maml["input_shape"], maml["shots"], maml["default_steps"]) == (
        "maml",
        "sinusoid",
        [1],
        3,
        3,
    )
    assert (proto["algorithm"], proto["evaluation"], proto["input_shape"], proto["ways"], proto["default_steps"]) == (
        "protonet",
        "closed-form",
        [1, 16, 16],
        2,
        None,
    )
    assert client.health()["status"] == "ok"


@pytest.mark.parametrize("name", ["maml", "maltml"])
def test_regression_answers_equal_the_in_process_api(service, runs, name):
    client, _ = service
    rng = np.random.default_rng(1)
    for steps in (None, 0, 5):
        sx, sy, qx = sinusoid_task(rng)
        got = client.predict(sx, sy, qx, steps=steps, model=runs[name].name)
        want = local(runs[name], sx, sy, qx, steps)
        assert torch.equal(torch.tensor(got["predictions"], dtype=want.dtype), want[:, 0])
    # steps=0 is the meta-parameters' own prediction: independent of adaptation code.
    model = metaserve.load(runs[name])
    q = torch.tensor(qx, dtype=model.learner.dtype)
    plain = torch.func.functional_call(model.learner.algorithm.model, model.params, (q,))
    zero = client.predict(sx, sy, qx, steps=0, model=runs[name].name)
    assert torch.equal(torch.tensor(zero["predictions"], dtype=plain.dtype), plain[:, 0])


def test_metric_answers_equal_the_in_process_api_for_arrays_and_pngs(service, runs):
    client, _ = service
    sx, sy, qx = image_task(np.random.default_rng(2))
    got = client.predict(sx, sy, qx, model=runs["protonet"].name)
    want = local(runs["protonet"], sx, sy, qx)
    assert torch.equal(torch.tensor(got["logits"], dtype=want.dtype), want)
    assert got["predictions"] == want.argmax(-1).tolist()
    assert np.allclose(got["probabilities"], torch.softmax(want.double(), -1).numpy(), atol=1e-12)
    # The same images as PNGs decode to uint8 / 255, as the image tasks load them.
    pixels = np.random.default_rng(3).integers(0, 256, (5, 16, 16), dtype=np.uint8)
    pngs = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    arrays = (pixels[:, None] / 255.0).tolist()
    a = client.predict(pngs[:2], [0, 1], pngs[2:], model=runs["protonet"].name)
    b = client.predict(arrays[:2], [0, 1], arrays[2:], model=runs["protonet"].name)
    assert a["logits"] == b["logits"]


def test_concurrent_requests_are_batched_without_cross_talk(service, runs):
    client, _ = service
    rng = np.random.default_rng(4)
    jobs = [("maml", *sinusoid_task(rng)) for _ in range(12)] + [("protonet", *image_task(rng)) for _ in range(12)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda j: client.predict(j[1], j[2], j[3], model=runs[j[0]].name), jobs))
    assert max(a["batch_size"] for a in answers) > 1  # some requests really were adapted together
    for (name, sx, sy, qx), got in zip(jobs, answers):
        want = local(runs[name], sx, sy, qx)
        out = torch.tensor(got["predictions"] if name == "maml" else got["logits"], dtype=want.dtype)
        assert torch.allclose(out, want[:, 0] if name == "maml" else want, rtol=1e-5, atol=1e-6)
    firsts = {round(a["predictions"][0], 4) for a in answers[:12]}
    assert len(firsts) == 12  # different supports, different answers


def post(port: int, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    status, data = resp.status, json.loads(resp.read())
    conn.close()
    return status, data


def test_every_bad_request_gets_a_4xx_and_the_service_keeps_serving(service, runs):
    _, port = service
    maml, proto = runs["maml"].name, runs["protonet"].name
    good = {"support_x": [[0.5], [1.0]], "support_y": [0.1, 0.2], "query_x": [[0.3]], "model": maml}
    sx, _, qx = image_task(np.random.default_rng(5), q=1)
    image = {"support_x": sx, "support_y": [0, 1], "query_x": qx, "model": proto}
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (json.dumps([1, 2]).encode(), 422, "JSON object"),
        ({"support_x": [[1.0]], "support_y": [1.0], "model": maml}, 422, "query_x"),
        ({**good, "extra": 1}, 422, "extra is not a request field"),
        ({**good, "support_x": [[0.5, 1.0], [1.0, 2.0]]}, 422, "shape [2, 2]"),
        ({**good, "support_x": [[0.5], [1.0, 2.0]]}, 422, "rectangular"),
        ({**good, "support_x": [[True], [False]]}, 422, "numbers"),
        ({**good, "query_x": ["abc"]}, 422, "not images"),
        ({**good, "support_y": [0.1]}, 422, "support_y has 1 entries"),
        ({**good, "support_x": [], "support_y": []}, 422, "support_x is empty"),
        ({**good, "query_x": []}, 422, "query_x is empty"),
        (json.dumps(good).replace("0.3", "NaN").encode(), 422, "NaN or infinite"),
        (json.dumps(good).replace("0.1", "1e999").encode(), 422, "NaN or infinite"),
        ({**good, "steps": 21}, 422, "steps=21 is outside the allowed range 0..20"),
        ({**good, "steps": -1}, 422, "steps=-1"),
        ({**good, "steps": "many"}, 422, "steps"),
        ({**good, "support_x": [[0.0]] * 150, "support_y": [0.0] * 150, "query_x": [[0.0]] * 60}, 413, "at most 200"),
        ({**good, "model": "nope"}, 404, "model='nope' is not served"),
        ({k: v for k, v in good.items() if k != "model"}, 422, "model is required"),
        ({**image, "support_y": [0, 2]}, 422, "label 2"),
        ({**image, "support_y": [0, 0]}, 422, "lacks class 1"),
        ({**image, "support_y": [0.0, 1.0]}, 422, "integer class indices"),
        ({**image, "steps": 3}, 422, "closed form"),
        ({**image, "support_x": ["bm90IGEgcG5n", "!!"]}, 422, "support_x[0] is not a base64-encoded PNG"),
        ({**image, "query_x": [[[[0.0] * 8] * 8]]}, 422, "shape [1, 1, 8, 8]"),
        (b"x" * (65 * 1024), 413, "bytes"),
    ]
    for body, status, words in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        got_status, data = post(port, raw)
        assert (got_status, words in data.get("error", "")) == (status, True), (raw[:120], data)
        assert data["error"].count(". ") == 0  # one sentence
        assert post(port, json.dumps(good).encode())[0] == 200
    # A body too large with no Content-Length (chunked) is refused too.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/predict",
        body=iter([b"x" * 40000, b"x" * 40000]),
        encode_chunked=True,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["error"]
    conn.close()
    assert post(port, json.dumps(image).encode())[0] == 200


def test_per_run_layout_answers_as_the_shared_one(service, runs):
    """One deployment per run behind a router (second application on the same Serve instance)."""
    from ray import serve

    from metaserve.serve.app import build

    client, port = service
    serve.run(
        build([str(runs["maml"]), str(runs["protonet"])], limits=LIMITS, layout="per-run"),
        name="per-run",
        route_prefix="/per-run",
    )
    routed = Client(f"http://127.0.0.1:{port}/per-run")
    try:
        assert {m["id"] for m in routed.models()} == {runs["maml"].name, runs["protonet"].name}
        rng = np.random.default_rng(6)
        for name, task in (("maml", sinusoid_task(rng)), ("protonet", image_task(rng))):
            a, b = (c.predict(*task, model=runs[name].name) for c in (routed, client))
            assert a["predictions"] == b["predictions"] and a.get("logits") == b.get("logits")
        with pytest.raises(ServeError, match="not served"):
            routed.predict([[0.0]], [0.0], [[0.0]], model=runs["maltml"].name)
        with pytest.raises(ServeError, match="steps=99"):
            routed.predict([[0.0]], [0.0], [[0.0]], model=runs["maml"].name, steps=99)
    finally:
        serve.delete("per-run")


def test_client_raises_the_service_message(service, runs):
    client, _ = service
    with pytest.raises(ServeError, match="not served"):
        client.predict([[0.0]], [0.0], [[0.0]], model="nope")


def test_cli_refuses_bad_options_before_starting_ray(tmp_path, capsys):
    import ray

    was = ray.is_initialized()
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--replicas", "0"]) == 2
    assert "replicas=0" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert main(["serve", str(tmp_path), "--replicas", "2", "--max-replicas", "1"]) == 2
    assert "max_replicas=1" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-steps", "-1"]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "max_batch=0" in capsys.readouterr().err
    assert ray.is_initialized() == was


def test_submit_pins_served_run_directories(runs):
    from metaserve.commands.submit import prepare

    here = runs["maml"].parent
    plan = prepare(["serve", runs["maml"].name, "--port", "8001"], here, here, None)
    assert plan.argv == ["serve", str(runs["maml"]), "--port", "8001"]


def test_serve_config_file_builds_the_application(runs):
    """cluster/serve.yaml's arguments build the application (`serve deploy` calls app_builder)."""
    import yaml
    from ray import serve

    from metaserve.serve.app import app_builder

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster" / "serve.yaml").read_text())
    args = {**config["applications"][0]["args"], "runs": [str(runs["maml"])]}
    assert config["applications"][0]["import_path"] == "metaserve.serve.app:app_builder"
    assert isinstance(app_builder(args), serve.Application)
    assert isinstance(app_builder({**args, "max_replicas": 4}), serve.Application)
    with pytest.raises(ValueError, match="max_steps"):
        app_builder({**args, "max_steps": -1})
