"""Fetch the official Omniglot zips (Lake et al. 2015) from github.com/brendenlake/omniglot, verified.

The four zips of the repository's `python/` folder: `images_background.zip` / `images_evaluation.zip`
(the 30 + 20 alphabet split) and `images_background_small1.zip` / `_small2.zip` (the 5 + 5 alphabet
split the shipped configs read). No SHA-256 of them is published, so:
- the two full zips are checked against the MD5s that torchvision publishes for exactly these URLs
  (torchvision.datasets.Omniglot: 68d2efa1..., 6b91aef0...), a documented source;
- every file's SHA-256 is computed and recorded in `<dest>/SHA256SUMS` on first download (the
  command says so), and a later fetch into the same folder must match the recorded digest.
A download goes to `<name>.part` and is renamed only once it checks out: a file already there is
never replaced or lost. `base_url` is overridable (METASERVE_OMNIGLOT_URL, `--base-url`) for mirrors
and for the tests' loopback server.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
FILES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)
MD5 = {  # published by torchvision.datasets.Omniglot for these two files
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
SUMS_FILE = "SHA256SUMS"


class DownloadError(ValueError):
    """A fetch that failed or did not verify; the message names the file, the URL and what was expected."""


@dataclass
class Fetched:
    """One file: where it is, its SHA-256, and what happened ('downloaded', 'present', 'recorded')."""

    path: Path
    sha256: str
    status: str


def read_sums(dest: Path) -> dict[str, str]:
    path = dest / SUMS_FILE
    if not path.is_file():
        return {}
    return {name: digest for digest, name in (ln.split(None, 1) for ln in path.read_text().splitlines() if ln.strip())}


def _write_sums(dest: Path, sums: dict[str, str]) -> None:
    (dest / SUMS_FILE).write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _download(url: str, target: Path, say: Callable[[str], None], timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            total, done, shown = int(response.headers.get("Content-Length") or 0), 0, -1
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                done += len(block)
                pct = 100 * done // total if total else -1
                if total and pct // 25 > shown:
                    shown = pct // 25
                    say(f"  {target.name.removesuffix('.part')}: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
    except (urllib.error.URLError, OSError) as err:
        target.unlink(missing_ok=True)
        raise DownloadError(
            f"could not fetch {url} ({err}); check the network or pass --base-url of a mirror"
        ) from None


def fetch_omniglot(
    dest: str | Path,
    *,
    base_url: str | None = None,
    files: tuple[str, ...] = FILES,
    md5: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> list[Fetched]:
    """Download `files` into `dest` (skipping verified ones already there) and check their digests."""
    unknown = [f for f in files if f not in FILES]
    if unknown:
        raise DownloadError(f"unknown Omniglot file {unknown[0]!r}; the files are {', '.join(FILES)}")
    base = (base_url or os.environ.get("METASERVE_OMNIGLOT_URL") or BASE_URL).rstrip("/")
    md5 = MD5 if md5 is None else md5
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {str(dest)!r} is a file; give a folder (new or existing)")
    dest.mkdir(parents=True, exist_ok=True)
    sums, out = read_sums(dest), []
    for name in files:
        path, part = dest / name, dest / f"{name}.part"
        fresh = not path.is_file()
        if fresh:
            say(f"fetching {base}/{name}")
            _download(f"{base}/{name}", part, say, timeout)
        sha, md = _digests(part if fresh else path)
        problem = None
        if name in md5 and md != md5[name]:
            problem = f"MD5 {md}, expected {md5[name]} (published by torchvision for this file)"
        elif name in sums and sha != sums[name]:
            problem = f"SHA-256 {sha}, expected {sums[name]} (recorded in {dest / SUMS_FILE} on first download)"
        if problem:
            if fresh:
                part.unlink()
            where = f"{base}/{name}" if fresh else str(path)
            then = "nothing was kept" if fresh else "delete it to re-fetch"
            raise DownloadError(f"{name} from {where} has {problem}; {then}")
        if fresh:
            part.replace(path)
        status = "downloaded" if fresh else "present"
        if name not in sums:
            sums[name], status = sha, f"{status}, SHA-256 recorded"
            _write_sums(dest, sums)
        out.append(Fetched(path, sha, status))
    return out
