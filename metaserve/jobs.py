"""Ray Jobs SDK glue for `metaserve submit` and `metaserve jobs`: address, token, client, runtime_env.

The Jobs API is served by the Ray dashboard (http://<head>:8265). Ray 2.60 turns token
authentication on by default, and the API refuses a client without the cluster's token. We read the
token where Ray keeps it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and send it as a
request header, instead of setting RAY_AUTH_MODE in this process, so using these commands changes
nothing in the caller's environment. Every failure to reach or use the cluster is a `JobsError`
whose message names the address and says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DASHBOARD_PORT = 8265
CONNECT_TIMEOUT_S = 5.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Left out of the shipped working directory: results, environments, caches, VCS data.
# Ray also applies the folder's .gitignore files (and .rayignore) on top of these.
EXCLUDES = [
    "runs/",
    ".venv/",
    "venv/",
    ".git/",
    "**/__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".cache/",
    "*.egg-info/",
    "build/",
    "dist/",
    "benchmarks/results/",
    ".env",
    ".env.*",
    "*.pt",
    "*.pem",
    "*.key",
]
# Names whose values are never printed (the job still gets them when named with --env).
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH|PRIVATE|SESSION)", re.IGNORECASE)
# Sent to every job: progress lines stream to `metaserve jobs logs --follow` as they are printed.
JOB_ENV = {"PYTHONUNBUFFERED": "1"}
_RUN_DIR_LINE = re.compile(r"^(?:run|sweep) directory: (.+?)(?: \(resumed at step \d+\))?\s*$", re.MULTILINE)


class JobsError(ValueError):
    """The cluster cannot be reached or used as asked; the message names the address and the fix."""


def resolve_address(address: str | None) -> str:
    """The Jobs API URL: `address`, else RAY_API_SERVER_ADDRESS, else an http(s) RAY_ADDRESS, else 127.0.0.1:8265.

    A bare `host` or `host:port` means http (port 8265 when none is given). RAY_ADDRESS usually holds a
    GCS address for `ray.init` (host:6379), which is not the Jobs API, so only an http(s) one is used.
    """
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or (
            env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
        )
    raw = address.strip().rstrip("/")
    if raw == "auto" or raw.startswith("ray://"):
        raise JobsError(
            f"address {address!r} is not a Jobs API address: give the dashboard's URL, e.g. {DEFAULT_ADDRESS}"
        )
    if "://" not in raw:
        raw = f"http://{raw}" if re.search(r":\d+$", raw) else f"http://{raw}:{DASHBOARD_PORT}"
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise JobsError(f"address {address!r} is not a Jobs API URL like {DEFAULT_ADDRESS} (http(s)://HOST:PORT)")
    return raw


def check_listening(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, naming `url`, when nothing accepts connections there."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except OSError as err:
        reason = err.strerror or type(err).__name__
    raise JobsError(
        f"no Ray Jobs API at {url}: nothing is listening there ({reason}). Start a cluster "
        "(python cluster/local_cluster.py start, or `ray up ray_cluster.yaml` plus `ray dashboard "
        "ray_cluster.yaml` for the SSH tunnel) or pass --address with the dashboard's URL"
    )


def find_token() -> tuple[str | None, str]:
    """The cluster token and where it came from, looked up as Ray does; (None, places looked) if none."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    return None, f"RAY_AUTH_TOKEN, {path}"


def token_help(url: str, found: bool, source: str) -> str:
    """What to do when the cluster at `url` refuses us."""
    what = (
        f"refused the token from {source}" if found else f"needs its authentication token and none was found ({source})"
    )
    return (
        f"the Ray cluster at {url} {what}. On the head node, `ray get-auth-token` prints the cluster's token: "
        "save it here as ~/.ray/auth_token (chmod 600) or export RAY_AUTH_TOKEN=<token>"
    )


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    # JobSubmissionClient lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given;
    # the address we resolved (from --address first) must win.
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass
class Cluster:
    """A connected Jobs API client and its URL; methods turn SDK errors into `JobsError` sentences."""

    url: str
    client: object

    def submit(self, entrypoint: str, runtime_env: dict, metadata: dict[str, str], job_id: str | None) -> str:
        return self._call(
            lambda: self.client.submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata, submission_id=job_id
            ),
            job_id,
        )

    def info(self, job_id: str):
        return self._call(lambda: self.client.get_job_info(job_id), job_id)

    def list(self) -> list:
        return self._call(self.client.list_jobs)

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self.client.get_job_logs(job_id), job_id)

    def stop(self, job_id: str) -> bool:
        return self._call(lambda: self.client.stop_job(job_id), job_id)

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.5) -> str:
        """The job's status once terminal, or its current one after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = str(self.info(job_id).status)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(poll_s)

    def follow(self, job_id: str, write: Callable[[str], None]) -> str:
        """Stream the job's logs to `write` until it ends; its final status."""
        self.info(job_id)  # an unknown id fails here with a sentence, not in the websocket

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        try:
            asyncio.run(tail())
        except RuntimeError as err:  # the stream can close before the status turns terminal
            if "closed" not in str(err).lower():
                raise JobsError(f"the log stream of job {job_id!r} from {self.url} failed: {err}") from None
        except Exception as err:  # aiohttp's client errors
            if isinstance(err, JobsError):
                raise
            raise JobsError(f"lost the log stream of job {job_id!r} from {self.url}: {err}") from None
        return self.wait(job_id, timeout_s=30)

    def _call(self, fn: Callable, job_id: str | None = None):
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except AuthenticationError:
            token, source = find_token()
            raise JobsError(token_help(self.url, token is not None, source)) from None
        except RuntimeError as err:
            if job_id and "404" in str(err):
                raise JobsError(
                    f"there is no job {job_id!r} on {self.url}; `metaserve jobs list --address {self.url}` "
                    "shows the jobs there"
                ) from None
            raise JobsError(f"the Jobs API at {self.url} failed: {err}") from None
        except OSError as err:  # requests' ConnectionError is an OSError
            raise JobsError(f"lost the connection to the Jobs API at {self.url}: {err}") from None


def connect(address: str | None) -> Cluster:
    """A client for the cluster at `address` (see `resolve_address`), checked to answer and to accept our token."""
    url = resolve_address(address)
    check_listening(url)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _quiet_sdk_logs()
    token, source = find_token()
    # Always our own header (empty without a token): the SDK then adds none of its own, so what is
    # sent depends only on the lookup above, not on Ray state cached in this process.
    headers = {"Authorization": f"Bearer {token}" if token else ""}
    try:
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            client = JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        raise JobsError(token_help(url, token is not None, source)) from None
    except (ConnectionError, RuntimeError, OSError) as err:
        raise JobsError(
            f"{url} did not answer as a Ray dashboard ({err}); the Jobs API is on the dashboard port "
            f"({DASHBOARD_PORT} by default), not the GCS port (6379)"
        ) from None
    return Cluster(url, client)


def _quiet_sdk_logs() -> None:
    # The SDK logs every packaging step at INFO (and warns that .git/.venv are skipped, which our
    # excludes do anyway); metaserve prints its own summary instead.
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
        "ray._private.runtime_env.working_dir",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def runtime_env(working_dir: Path, env_vars: dict[str, str]) -> dict:
    """Ship `working_dir` (less EXCLUDES) and the env vars the job needs."""
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": {**JOB_ENV, **env_vars}}


def forwarded_env(extra: list[str]) -> dict[str, str]:
    """Only the variables the user names: `--env NAME` (its value here) or `--env NAME=VALUE`, checked."""
    env = {}
    for item in extra:
        key, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise JobsError(f"--env {item.partition('=')[0]!r} is not a variable name: give NAME or NAME=VALUE")
        if key.startswith("RAY_AUTH"):
            raise JobsError(
                f"--env {key}: the token is never shipped in a job's environment; the cluster passes its own"
            )
        if not sep:
            if key not in os.environ:
                raise JobsError(f"--env {key}: no variable {key} is set here; give --env {key}=VALUE or export it")
            value = os.environ[key]
        env[key] = value
    return env


def shown_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for printing: values of secret-looking names (TOKEN, KEY, PASSWORD, ...) replaced by '<hidden>'."""
    return {k: "<hidden>" if SECRET_NAME.search(k) else v for k, v in env.items()}


def shipped_files(working_dir: Path) -> list[str]:
    """The files Ray uploads from `working_dir` (EXCLUDES plus its .gitignore/.rayignore files), relative, sorted.

    Walks the folder with Ray's own packaging rules, so `submit --dry-run` lists exactly what a job gets.
    """
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root, found = Path(working_dir).absolute(), []
    _dir_travel(
        root,
        [_get_excludes(root, list(EXCLUDES))],
        lambda p: found.append(p.relative_to(root).as_posix()) if p.is_file() else None,
        include_gitignore=True,
    )
    return sorted(found)


def run_dirs_in(logs: str) -> list[str]:
    """The run (or sweep) directories a metaserve job reported (`run directory: ...` lines), in order, unique."""
    found = list(dict.fromkeys(m.group(1) for m in _RUN_DIR_LINE.finditer(logs)))
    # A run mirrored to a URI is reported as "<uri> (staged in <dir>)" and later as <dir>: keep the first.
    return [d for d in found if not any(f"(staged in {d})" in other for other in found)]


def is_loopback(url: str) -> bool:
    """Whether the Jobs API URL points at this machine (its results paths are then ours too)."""
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
