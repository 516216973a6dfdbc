"""A signed manifest of the pickles in a sweep folder, so that `tune --resume` never runs planted code.

Ray Tune's restore unpickles `tune/tuner.pkl`, `tune/trainable.pkl`, the cloudpickled trial states
inside `tune/experiment_state-*.json` and the searcher state (`tune/*-state-*.json|pkl`), and
trials' `error.pkl`. Unpickling runs whatever a file says, so a sweep folder copied from a colleague
or a shared disk could run code. While a sweep runs, `ManifestSigner` (a Tune callback, after each
controller step, when Tune has just saved its state) records the SHA-256 of every such file in
`manifest.json` and signs the list with HMAC-SHA256 under a per-user key kept outside the folder
(`~/.config/metaserve/key`, mode 0600, made on first use; `METASERVE_KEY_FILE` names another).
`verify` runs before any restore: every pickle-bearing file must carry a digest this user signed, or
the resume is refused. Trusted: this user's key file and the metaserve code. Not trusted: anything
in the sweep folder. A file's last `KEEP` signed versions are accepted, because Tune copies its
state into the folder in the background and a kill may land between a copy and the next signing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from ray.tune import Callback

from metaserve.config import ConfigError

MANIFEST = "manifest.json"
KEEP = 4  # signed versions accepted per file
_KEY_ENV = "METASERVE_KEY_FILE"


def key_path() -> Path:
    """Where this user's signing key lives (METASERVE_KEY_FILE, else ~/.config/metaserve/key)."""
    return Path(os.environ.get(_KEY_ENV) or Path.home() / ".config" / "metaserve" / "key").expanduser()


def signing_key(create: bool = True) -> bytes:
    """This user's key: 32 random bytes, made on first use in a file only the user can read."""
    path = key_path()
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made by another process just now
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    if not path.is_file():
        raise ConfigError(
            f"no signing key at {str(path)!r}: only sweeps started by this user (whose key signed "
            "their manifest) can be resumed"
        )
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"signing key {str(path)!r} can be read by other users: chmod 600 it (it vouches for sweep folders)"
        )
    return bytes.fromhex(path.read_text().strip())


def pickle_files(sweep_dir: Path) -> list[Path]:
    """Every file under `sweep_dir/tune` that Ray Tune may unpickle on restore or when reading results."""
    tune_dir = Path(sweep_dir) / "tune"
    if not tune_dir.is_dir():
        return []
    top = [p for p in tune_dir.iterdir() if p.is_file() and p.suffix in (".pkl", ".json", ".pickle")]
    deep = [p for p in tune_dir.rglob("*") if p.is_file() and p.suffix in (".pkl", ".pickle") and p.parent != tune_dir]
    return sorted(top + deep)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mac(key: bytes, files: dict[str, list[str]]) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _read(sweep_dir: Path) -> dict[str, list[str]]:
    """The signed digests of the manifest, {} when it has none; ConfigError when it is not one we signed."""
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        files, mac = data["files"], data["hmac"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{str(path)!r} is not a metaserve manifest: refusing to resume this sweep") from None
    if not hmac.compare_digest(_mac(signing_key(), files), str(mac)):
        raise ConfigError(
            f"{str(path)!r} is not signed with this user's key ({key_path()}): the sweep folder was "
            "written by someone else or changed, so its pickles are not loaded (they could run code)"
        )
    return files


def sign(sweep_dir: Path) -> None:
    """Add the digest of every current pickle-bearing file to the manifest and sign it (atomically)."""
    sweep_dir = Path(sweep_dir)
    files = _read(sweep_dir)
    for path in pickle_files(sweep_dir):
        rel, digest = path.relative_to(sweep_dir).as_posix(), _digest(path)
        versions = [d for d in files.get(rel, []) if d != digest] + [digest]
        files[rel] = versions[-KEEP:]
    tmp = sweep_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    signed = {"version": 1, "files": files, "hmac": _mac(signing_key(), files)}
    tmp.write_text(json.dumps(signed, indent=1, sort_keys=True))
    os.replace(tmp, sweep_dir / MANIFEST)


def verify(sweep_dir: Path) -> None:
    """ConfigError unless every file Tune would unpickle carries a digest signed with this user's key."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / MANIFEST).is_file():
        raise ConfigError(
            f"{str(sweep_dir)!r} has no {MANIFEST}: it was not started by `metaserve tune` as this user, "
            "so its pickles are not loaded (they could run code)"
        )
    files = _read(sweep_dir)
    for path in pickle_files(sweep_dir):
        rel = path.relative_to(sweep_dir).as_posix()
        if rel not in files:
            raise ConfigError(
                f"{rel!r} in {str(sweep_dir)!r} is not in the signed manifest: refusing to resume "
                "(a pickle this user's sweep did not write could run code)"
            )
        if _digest(path) not in files[rel]:
            raise ConfigError(
                f"{rel!r} in {str(sweep_dir)!r} changed after it was signed: refusing to resume "
                "(a pickle this user's sweep did not write could run code)"
            )


class ManifestSigner(Callback):
    """Re-signs the sweep's manifest after each Tune controller step (when its state files changed) and at the end."""

    def __init__(self, sweep_dir: str) -> None:
        self.sweep_dir = sweep_dir
        self._seen: dict[str, tuple[int, int]] = {}

    def _changed(self) -> bool:
        now = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in pickle_files(Path(self.sweep_dir))}
        changed, self._seen = now != self._seen, now
        return changed

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self._changed():
            sign(Path(self.sweep_dir))

    def on_experiment_end(self, trials: list, **info) -> None:
        sign(Path(self.sweep_dir))

    def __getstate__(self) -> dict:
        return {"sweep_dir": self.sweep_dir, "_seen": {}}  # pickled into tuner.pkl: the path, never the key
