"""`metaserve data omniglot` against a loopback HTTP server serving small fixture zips (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from metaserve.cli import main
from metaserve.tasks.download import SUMS_FILE, DownloadError, fetch_omniglot

NAMES = ("images_background.zip", "images_evaluation.zip")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 (a free port); yields (base_url, www folder)."""
    www = tmp_path / "www"
    www.mkdir()
    for name in NAMES:
        with zipfile.ZipFile(www / name, "w") as z:
            z.writestr(f"{name[:-4]}/Alphabet/character01/0001_01.png", b"not really a png: " + name.encode())
    handler = partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


def digests(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def test_fetch_verifies_md5_records_sha256_and_skips_present_files(server, tmp_path):
    base, www = server
    md5 = {n: digests(www / n)[1] for n in NAMES}
    dest = tmp_path / "data"
    said: list[str] = []
    fetched = fetch_omniglot(dest, base_url=base, files=NAMES, md5=md5, say=said.append)
    for f, name in zip(fetched, NAMES):
        assert f.path == dest / name and f.path.read_bytes() == (www / name).read_bytes()
        assert f.sha256 == digests(www / name)[0] and "recorded" in f.status
    assert f"fetching {base}/images_background.zip" in said
    sums = (dest / SUMS_FILE).read_text().splitlines()
    assert sums == [f"{digests(www / n)[0]}  {n}" for n in sorted(NAMES)]  # sha256sum -c format
    assert not list(dest.glob("*.part"))
    again = fetch_omniglot(dest, base_url=base, files=NAMES, md5=md5, say=said.append)
    assert [f.status for f in again] == ["present", "present"]


def test_a_bad_digest_keeps_nothing_and_loses_nothing(server, tmp_path):
    base, www = server
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    wrong = {"images_background.zip": "0" * 32}
    with pytest.raises(
        DownloadError,
        match=r"images_background.zip from http://127.0.0.1:\d+/images_background.zip has MD5 "
        r"[0-9a-f]{32}, expected 0{32}.*nothing was kept",
    ):
        fetch_omniglot(dest, base_url=base, files=NAMES[:1], md5=wrong, say=lambda _m: None)
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"]  # no zip, no .part, the user's file intact
    # a recorded SHA-256 that a present file no longer matches: named, and the file is left alone
    fetch_omniglot(dest, base_url=base, files=NAMES[:1], md5={}, say=lambda _m: None)
    (dest / "images_background.zip").write_bytes(b"changed")
    with pytest.raises(DownloadError, match="SHA-256 .*recorded in .*SHA256SUMS.*delete it to re-fetch"):
        fetch_omniglot(dest, base_url=base, files=NAMES[:1], md5={}, say=lambda _m: None)
    assert (dest / "images_background.zip").read_bytes() == b"changed"


def test_cli_reports_a_mismatch_in_one_sentence_and_a_dead_server(server, tmp_path, capsys):
    base, _www = server
    # the fixture is not the official zip: the published MD5 rejects it, through the real command
    assert main(["data", "omniglot", "--dest", str(tmp_path / "d"), "--base-url", base]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and "published by torchvision" in err and "Traceback" not in err
    assert main(["data", "omniglot", "--dest", str(tmp_path / "d"), "--base-url", "http://127.0.0.1:9/none"]) == 2
    assert "could not fetch http://127.0.0.1:9/none/images_background.zip" in capsys.readouterr().err


def test_missing_root_names_the_data_command(tmp_path):
    from metaserve.tasks import resolve_root

    with pytest.raises(FileNotFoundError, match="metaserve data omniglot --dest DIR"):
        resolve_root(str(tmp_path / "nowhere"))
