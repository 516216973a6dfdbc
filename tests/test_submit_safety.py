"""`metaserve submit --dry-run`: only named variables travel, secret-looking values are never printed,
and the upload is the working folder less .gitignore'd paths and the default excludes (.env, *.pt, runs/)."""

from __future__ import annotations

import json

import yaml

from metaserve.cli import main


def test_dry_run_shows_the_filtered_upload_and_hides_secrets(tmp_path, monkeypatch, capsys):
    wd = tmp_path / "project"
    for rel, text in {
        "a.py": "x = 1\n",
        ".env": "MY_TOKEN=s3cr3t\n",
        "model.pt": "weights",
        "runs/r/x.txt": "old",
        ".gitignore": "private/\n",
        "private/notes.txt": "mine",
        "sub/b.py": "y = 2\n",
        "sub/.env.local": "K=v",
    }.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(text)
    (wd / "cfg.yaml").write_text(yaml.safe_dump({"train": {"steps": 2}}))
    monkeypatch.chdir(wd)
    monkeypatch.setenv("METASERVE_CACHE", str(tmp_path / "cache"))  # no longer sent unless named
    monkeypatch.setenv("MY_TOKEN", "s3cr3t")
    monkeypatch.setenv("PLAIN", "visible")
    assert (
        main(
            [
                "submit",
                "--dry-run",
                "--env",
                "MY_TOKEN",
                "--env",
                "PLAIN",
                "--env",
                "DB_PASSWORD=hunter2",
                "--",
                "metaserve",
                "train",
                "cfg.yaml",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "hunter2" not in out
    job = json.loads(out[out.index("{") :])
    assert job["uploaded_files"] == [".gitignore", "a.py", "cfg.yaml", "sub/b.py"]
    env = job["runtime_env"]["env_vars"]
    assert env == {"PYTHONUNBUFFERED": "1", "MY_TOKEN": "<hidden>", "PLAIN": "visible", "DB_PASSWORD": "<hidden>"}
