"""Packaging: --version, python -m metaserve, train --help's config sections, metaserve init, and a wheel
that ships py.typed, the configs and the sweep specs (built here from a copy of the sources)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from metaserve import registry
from metaserve.cli import main
from metaserve.config import Config
from metaserve.tuning import load_sweep

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_version_and_python_dash_m(capsys):
    assert main(["--version"]) == 0  # argparse's exit, caught by the CLI
    assert capsys.readouterr().out.strip() == f"metaserve {importlib.metadata.version('metaserve')}"
    proc = subprocess.run(
        [sys.executable, "-m", "metaserve", "--version"], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("metaserve ")


def test_train_help_lists_every_config_section_and_key(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrap
    for section in ("task", "model", "algorithm", "train", "eval", "runtime", "curriculum"):
        assert f" {section}: " in text
    for key in Config.model_fields["train"].annotation.model_fields:  # every train.* key, read from the model
        assert key in text
    assert all(name in text for name in registry.names()) and "omniglot" in text  # every registered algorithm


def test_init_copies_configs_and_specs_that_still_validate(tmp_path, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sinusoid-maml.yaml").write_text("mine: true\n")
    assert main(["init", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "kept" in out and (tmp_path / "configs" / "sinusoid-maml.yaml").read_text() == "mine: true\n"
    )  # never overwritten
    assert {p.name for p in (tmp_path / "tuning").glob("*.yaml")} == {p.name for p in (ROOT / "tuning").glob("*.yaml")}
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {p.name for p in (tmp_path / "configs").glob("*.yaml")} == shipped
    (tmp_path / "configs" / "sinusoid-maml.yaml").write_bytes((ROOT / "configs" / "sinusoid-maml.yaml").read_bytes())
    assert load_sweep(tmp_path / "tuning" / "maml-reptile-lr-k.yaml").bases  # its ../configs bases resolve in the copy
    (tmp_path / "afile").write_text("x")
    assert main(["init", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_wheel_ships_configs_specs_and_py_typed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("metaserve", "configs", "tuning"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "_shipped"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("metaserve-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "metaserve/py.typed" in names and "metaserve/__main__.py" in names
    for kind in ("configs", "tuning"):
        for path in (ROOT / kind).glob("*.yaml"):
            assert f"metaserve/_shipped/{kind}/{path.name}" in names
