"""Where runs are stored: a local directory (the default) or a pyarrow filesystem URI (s3://, gs://, ...).

A run always writes its files locally first (checkpoints are fsync'd and renamed into place, see
checkpoint.py). For a URI `output_dir` that local directory is a staging copy under the metaserve
cache, and `publish` mirrors it to `<uri>/<run name>/` after every log row and at the end of the run,
so results from a cluster land where the user can read them. Checkpoint files are sent before the
metrics that mention them, and object stores replace whole objects, so a reader never sees half a
file. A local `output_dir` is used exactly as before: nothing is staged or copied.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path, PurePosixPath

from metaserve.config import cache_root, is_uri

# What has been sent from this process: target -> {relative path: (size, mtime_ns)}.
_SENT: dict[str, dict[str, tuple[int, int]]] = {}


def staging_root(uri: str) -> Path:
    """The local directory a URI's runs are written to first: `$METASERVE_CACHE/staging/<uri>`."""
    return cache_root() / "staging" / re.sub(r"[^A-Za-z0-9._-]+", "_", uri.rstrip("/"))


def local_root(output_dir: str) -> Path:
    """Where new run directories are created on this machine for `output_dir`."""
    return staging_root(output_dir) if is_uri(output_dir) else Path(output_dir)


def remote_path(run_dir: Path, output_dir: str) -> str | None:
    """`<uri>/<run name>` for a run staged for a URI `output_dir`; None for a local run (or a run
    directory chosen by someone else, e.g. a Tune trial, which has its own storage)."""
    if not is_uri(output_dir):
        return None
    try:
        rel = Path(run_dir).resolve().relative_to(staging_root(output_dir).resolve())
    except ValueError:
        return None
    return output_dir.rstrip("/") + "/" + rel.as_posix()


def location(run_dir: Path, output_dir: str) -> str:
    """Where the run's results are read: its URI when mirrored, else its directory."""
    remote = remote_path(run_dir, output_dir)
    return f"{remote} (staged in {run_dir})" if remote else str(run_dir)


def publish(run_dir: Path, output_dir: str, final: bool = False) -> str | None:
    """Mirror the run directory to its URI (new or changed files; pruned checkpoints removed there).

    A failed copy during the run is a warning (the next log row tries again; the local copy is
    complete); at the end of the run (`final`) it raises, naming the URI.
    """
    target = remote_path(run_dir, output_dir)
    if target is None:
        return None
    try:
        _mirror(Path(run_dir), target)
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses for I/O and credentials
        if final:
            raise OSError(f"could not copy run {str(run_dir)!r} to {target!r}: {err}") from err
        warnings.warn(f"could not copy run to {target!r} ({err}); retrying at the next log row", stacklevel=2)
    return target


def _temporary(rel: PurePosixPath) -> bool:
    return any(part.startswith(".tmp") or part.endswith(".tmp") for part in rel.parts)


def _mirror(run_dir: Path, target: str) -> None:
    from pyarrow import fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(target)
    base = base.rstrip("/")
    local = {}
    for path in run_dir.rglob("*"):
        rel = PurePosixPath(path.relative_to(run_dir).as_posix())
        if path.is_file() and not _temporary(rel):
            local[str(rel)] = path
    remote = {}
    for info in filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            remote[info.path[len(base) + 1 :]] = info.size
    sent = _SENT.setdefault(target, {})
    # Checkpoints first: metrics.parquet never names a step whose checkpoint is not there yet.
    for rel in sorted(local, key=lambda r: (not r.startswith("checkpoints/"), r)):
        stat = local[rel].stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if remote.get(rel) == stat.st_size and sent.get(rel) == stamp:
            continue
        parent = PurePosixPath(rel).parent
        filesystem.create_dir(base if str(parent) == "." else f"{base}/{parent}", recursive=True)
        with open(local[rel], "rb") as src, filesystem.open_output_stream(f"{base}/{rel}") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        sent[rel] = stamp
    gone = set(remote) - set(local)
    for step_dir in sorted({"/".join(r.split("/")[:2]) for r in gone if r.startswith("checkpoints/")}):
        if not any(r.startswith(step_dir + "/") for r in local):
            filesystem.delete_dir(f"{base}/{step_dir}")  # a checkpoint pruned locally (keep_checkpoints)
    for rel in gone:
        if not rel.startswith("checkpoints/"):
            filesystem.delete_file(f"{base}/{rel}")
        sent.pop(rel, None)
