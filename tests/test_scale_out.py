"""Scale out: `metaserve submit` / `metaserve jobs` on a real local Ray cluster, the cluster and docker
configs, and run storage on a filesystem URI.

The end-to-end tests start a head and one worker node with cluster/local_cluster.py (the script users
run: `ray start --block` per node, dashboard on 127.0.0.1, free ports, a private temp dir) once for
the module, submit as a user would, and stop exactly those nodes afterwards, checking that none of
their processes is left. The rest of the suite's embedded Ray is never touched, and RAY_ADDRESS is
neither read nor set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from metaserve import jobs
from metaserve.cli import main
from metaserve.commands.submit import prepare, yaml_scalar
from metaserve.config import ConfigError
from metaserve.store.checkpoint import latest_good_state, list_checkpoints
from metaserve.store.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "train.steps=4",
    "--set",
    "train.log_every=2",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.meta_batch=4",
    "--set",
    "train.val_tasks=2",
    "--set",
    "eval.episodes=4",
    "--set",
    "train.device=cpu",
    "--set",
    "model.hidden=[8]",
]


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "cluster" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_cluster = _load_local_cluster()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pyproject(key: str) -> str:
    """A top-level string value of pyproject.toml's [project] table (no toml parser on Python 3.10)."""
    return re.search(rf'^{key} = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def clean_env() -> dict[str, str]:
    """This process's environment without a Ray address, for the subprocesses we start."""
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}


# ---------------------------------------------------------------- cluster and image configs


def test_ray_cluster_yaml_is_valid_and_private():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(config)  # what `ray up` checks before it contacts the cloud
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in yaml.safe_dump(config)
    assert all(
        "RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands")
    )
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # every node gets the token
    types = config["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t["min_workers"] <= t["max_workers"] for t in gpu)
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    version = pyproject("version")
    assert config["docker"]["image"].endswith(f":{version}-gpu") and config["docker"]["head_image"].endswith(
        f":{version}-cpu"
    )


def test_dockerfile_versions_agree_with_pyproject():
    from packaging.specifiers import SpecifierSet

    text = (ROOT / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    ray_pin = re.search(r'^\s*"ray\[[\w,]+\]==([\w.]+)",', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert args["RAY_VERSION"] == ray_pin
    python = re.fullmatch(r"py(\d)(\d+)", args["PYTHON_TAG"])
    assert f"{python.group(1)}.{python.group(2)}" in SpecifierSet(pyproject("requires-python"))
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{FLAVOR\}$", text, re.MULTILINE)
    torch_pin = re.search(r"^TORCH_SPEC \?= torch==([\w.]+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert args["TORCH_VERSION"] == torch_pin
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"runs", ".venv", "data", ".git"} <= set(ignored)


# ---------------------------------------------------------------- submit: validation and path pinning


def test_submit_pins_results_and_data_paths(tmp_path):
    plan = prepare(["train", "configs/omniglot-maml-5w1s.yaml", "--set", "train.steps=3"], ROOT, ROOT, None)
    assert plan.argv[:2] == ["train", "configs/omniglot-maml-5w1s.yaml"]  # shipped: relative to the job's directory
    assert plan.results == str(ROOT / "runs")
    assert (
        f"output_dir={ROOT / 'runs'}" in plan.argv
        and f"task.root={(ROOT / '../shared/data/omniglot').resolve()}" in plan.argv
    )
    assert any("runtime.backend is 'local'" in n for n in plan.notes)
    uri = prepare(["train", "configs/sinusoid-maml-ray.yaml"], ROOT, ROOT, "s3://bucket/runs")
    assert uri.argv[-2:] == ["--set", "output_dir=s3://bucket/runs"] and not uri.notes
    # From a subdirectory, the config is named relative to the shipped working directory.
    assert (
        prepare(["train", "../configs/sinusoid-maml.yaml"], ROOT / "tests", ROOT, None).argv[1]
        == "configs/sinusoid-maml.yaml"
    )
    resumed = prepare(["train", "--resume", "runs/x"], ROOT, ROOT, None)
    assert resumed.argv == ["train", "--resume", str(ROOT / "runs" / "x")] and resumed.results == str(
        ROOT / "runs" / "x"
    )
    sweep = prepare(["tune", "tuning/maml-reptile-lr-k.yaml"], ROOT, ROOT, str(tmp_path))
    assert sweep.argv[-2:] == ["--set", f"storage={tmp_path}"]
    for odd in ("/tmp/a: b", "/tmp/#x", "true", "/tmp/[1]"):
        assert yaml.safe_load(yaml_scalar(odd)) == odd


@pytest.mark.parametrize(
    "argv, storage, message",
    [
        (["train", "/etc/hosts.yaml"], None, "outside the working directory"),
        (["train", "configs/sinusoid-maml.yaml", "--set", "output_dir=x"], "y", "--storage or --set output_dir"),
        (["train", "configs/sinusoid-maml.yaml"], "ftp://host/runs", "ftp:// is not a pyarrow filesystem"),
        (["eval", "runs/x"], "s3://b/r", "--storage applies to train and tune"),
        (["jobs", "list"], None, "runs here, not as a job"),
        ([], None, "needs the command to run"),
    ],
)
def test_submit_rejects_bad_commands_before_contacting_a_cluster(argv, storage, message, capsys):
    code = main(
        [
            "submit",
            "--address",
            f"http://127.0.0.1:{free_port()}",
            *(["--storage", storage] if storage else []),
            "--",
            "metaserve",
            *argv,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_submit_validates_the_run_config_first(capsys):
    assert (
        main(
            ["submit", "--dry-run", "--", "metaserve", "train", "configs/sinusoid-maml.yaml", "--set", "train.stepz=3"]
        )
        == 2
    )
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err


def test_job_specs_submit_valid_commands():
    names = subprocess.run(
        ["bash", str(ROOT / "cluster" / "experiments.sh"), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {p.stem for p in (ROOT / "configs").glob("*.yaml")} & set(names) >= {
        "sinusoid-maml",
        "sinusoid-maml-ray",
        "sinusoid-reptile",
        "sinusoid-lazy-maml",
        "omniglot-maml-5w1s",
        "omniglot-protonet-5w1s",
    }
    for name in names:
        line = subprocess.run(
            ["bash", str(ROOT / "cluster" / "experiments.sh"), name, "--print"],
            capture_output=True,
            text=True,
            check=True,
            env={**clean_env(), "WORKERS": "3"},
        ).stdout
        argv = shlex.split(line)
        assert argv[0] == "metaserve"
        plan = prepare(argv[1:], ROOT, ROOT, None)  # validates the config or sweep spec it names
        if argv[1] == "train":
            assert (
                "runtime.backend=ray" in argv and "runtime.num_workers=3" in argv and plan.results == str(ROOT / "runs")
            )


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address, for ray.init: not the Jobs API
    assert jobs.resolve_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert jobs.resolve_address(None) == "http://10.0.0.5:8265"
    assert jobs.resolve_address("10.0.0.7") == "http://10.0.0.7:8265"
    assert jobs.resolve_address("head:9000") == "http://head:9000"
    for bad in ("ray://head:10001", "auto", "http://:8265", "http://head:port"):
        with pytest.raises(jobs.JobsError, match="address"):
            jobs.resolve_address(bad)


def test_run_directories_are_read_from_the_logs():
    logs = (
        "run directory: s3://b/runs/x-1 (staged in /c/x-1)\nstep 2/4 | loss 1.0\nrun directory: /c/x-1\n"
        "run directory: /r/y (resumed at step 10)\nsweep directory: /r/sweeps/s-1\n"
    )
    assert jobs.run_dirs_in(logs) == ["s3://b/runs/x-1 (staged in /c/x-1)", "/r/y", "/r/sweeps/s-1"]


def test_nothing_listening_fails_fast_with_the_address(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    assert main(["submit", "--address", url, "--", "metaserve", "train", "configs/sinusoid-maml.yaml"]) == 2
    assert main(["jobs", "list", "--address", url]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - start < 10
    assert err.count(f"no Ray Jobs API at {url}: nothing is listening there") == 2 and "local_cluster.py start" in err


# ---------------------------------------------------------------- storage on a filesystem URI


def test_uri_output_dir_mirrors_the_run(tmp_path, monkeypatch):
    from metaserve.api import as_config
    from metaserve.runtime.loop import train_loop
    from metaserve.store import storage

    monkeypatch.setenv("METASERVE_CACHE", str(tmp_path / "cache"))
    uri = (tmp_path / "bucket").as_uri() + "/runs"
    config = as_config(
        {
            "name": "uri",
            "output_dir": uri,
            "model": {"hidden": [8]},
            "eval": {"episodes": 4},
            "train": {
                "steps": 6,
                "meta_batch": 2,
                "log_every": 2,
                "checkpoint_every": 2,
                "keep_checkpoints": 2,
                "val_tasks": 2,
                "device": "cpu",
            },
        }
    )
    result = train_loop(config)
    staged = result.run_dir
    assert staged.parent == storage.staging_root(uri)
    remote = tmp_path / "bucket" / "runs" / staged.name
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    board = [n for n in names(staged) if n.startswith("tensorboard/")]
    assert (
        names(remote)
        == names(staged)
        == [
            "checkpoints/00000004/state.pt",
            "checkpoints/00000006/state.pt",
            "config.yaml",
            "metrics.parquet",
            *board,
            "test.json",
        ]
    )  # step 2 pruned there too
    assert (
        len(board) == 1 and (remote / board[0]).read_bytes() == (staged / board[0]).read_bytes()
    )  # mirrored once complete
    assert latest_good_state(remote)["step"] == 6
    assert read_metrics(remote).equals(read_metrics(staged))
    assert storage.location(staged, uri) == f"{uri}/{staged.name} (staged in {staged})"
    # A local output_dir is used as given: nothing staged, nothing copied.
    assert storage.local_root("runs") == Path("runs") and storage.publish(staged, "runs") is None
    for bad, why in (("foo://x/runs", "foo:// is not a pyarrow filesystem"), ("s3://", "names no bucket")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            as_config({"output_dir": bad})


# ---------------------------------------------------------------- end to end on a local cluster


@pytest.fixture(scope="module")
def cluster():
    """Head + 1 worker node (1 CPU each), torn down after the module; yields cluster.json's content."""
    before = os.environ.get("RAY_ADDRESS")
    state_dir = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))  # short: Ray's socket paths are limited to 107 chars
    script = [sys.executable, str(ROOT / "cluster" / "local_cluster.py")]
    started = subprocess.run(
        [
            *script,
            "start",
            "--workers",
            "1",
            "--cpus",
            "1",
            "--port",
            "0",
            "--dashboard-port",
            "0",
            "--object-store-mb",
            "128",
            "--dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    state = json.loads((state_dir / local_cluster.STATE_FILE).read_text())
    try:
        yield state
    finally:
        stopped = subprocess.run(
            [*script, "stop", "--dir", str(state_dir), "--grace", "20"], capture_output=True, text=True
        )
        left = [pid for node in state["nodes"] for pid in local_cluster.session_members(node["pid"])]
        left += local_cluster.job_processes(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not left, f"processes of the test cluster left running: {left}"
        assert os.environ.get("RAY_ADDRESS") == before


def test_local_cluster_binds_the_jobs_api_to_loopback(cluster):
    assert cluster["dashboard"].startswith("http://127.0.0.1:") and len(cluster["nodes"]) == 2
    assert jobs.is_loopback(cluster["dashboard"])


def test_missing_token_is_explained(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["jobs", "list", "--address", cluster["dashboard"]]) == 2
    err = capsys.readouterr().err
    assert "needs its authentication token and none was found" in err and "ray get-auth-token" in err


def test_submitted_training_run_succeeds_and_reports_its_run_directory(cluster, tmp_path, capsys):
    url, out = cluster["dashboard"], tmp_path / "runs"
    # The entry point as a user runs it, in its own process.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaserve.cli",
            "submit",
            "--address",
            url,
            "--storage",
            str(out),
            "--",
            "metaserve",
            "train",
            "configs/sinusoid-maml-ray.yaml",
            *TINY,
            "--set",
            "name=e2e",
            "--set",
            "runtime.num_workers=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"submitted job (\S+)", done.stdout).group(1)
    assert f"results: a new run directory in {out}" in done.stdout and "step 4/4" in done.stdout
    run_dir = Path(re.search(rf"job {job_id}: SUCCEEDED; run directory: (\S+)", done.stdout).group(1))
    assert run_dir.parent == out
    assert list(read_metrics(run_dir)["step"]) == [2, 4]
    assert [p.name for p in list_checkpoints(run_dir)] == ["00000002", "00000004"] and (run_dir / "test.json").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["output_dir"] == str(out)

    assert main(["jobs", "status", job_id, "--address", url]) == 0
    status = capsys.readouterr().out
    assert f"job {job_id}: SUCCEEDED" in status and f"results:  {run_dir}" in status
    assert main(["jobs", "logs", job_id, "--address", url]) == 0
    assert f"run directory: {run_dir}" in capsys.readouterr().out
    assert main(["jobs", "list", "--address", url]) == 0
    assert re.search(rf"^{job_id}\s+SUCCEEDED\s", capsys.readouterr().out, re.MULTILINE)


def test_jobs_stop_stops_a_long_run_and_its_last_checkpoint_loads(cluster, tmp_path, capsys):
    url, out = cluster["dashboard"], tmp_path / "runs"
    long_run = [
        "--set",
        "train.steps=1000000",
        "--set",
        "train.log_every=5",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.meta_batch=2",
        "--set",
        "train.val_tasks=0",
        "--set",
        "model.hidden=[8]",
        "--set",
        "train.device=cpu",
        "--set",
        "name=long",
    ]
    assert (
        main(
            [
                "submit",
                "--no-wait",
                "--address",
                url,
                "--storage",
                str(out),
                "--",
                "metaserve",
                "train",
                "configs/sinusoid-maml.yaml",
                *long_run,
            ]
        )
        == 0
    )
    job_id = re.search(r"submitted job (\S+)", capsys.readouterr().out).group(1)
    cluster_client = jobs.connect(url)
    deadline = time.monotonic() + 120
    run_dirs: list[str] = []
    while time.monotonic() < deadline:
        run_dirs = jobs.run_dirs_in(cluster_client.logs(job_id))
        if run_dirs and len(list_checkpoints(Path(run_dirs[0]))) >= 2:
            break
        assert str(cluster_client.info(job_id).status) in ("PENDING", "RUNNING"), cluster_client.logs(job_id)
        time.sleep(0.5)
    assert run_dirs, cluster_client.logs(job_id)

    assert main(["jobs", "stop", job_id, "--address", url]) == 0
    said = capsys.readouterr().out
    assert f"job {job_id}: STOPPED" in said and f"train --resume {run_dirs[0]}" in said
    state = latest_good_state(Path(run_dirs[0]))
    assert state is not None and state["step"] >= 10 and state["step"] % 5 == 0
    time.sleep(1.0)
    assert latest_good_state(Path(run_dirs[0]))["step"] == state["step"]  # nothing writes to it any more
