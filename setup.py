"""Build hook only (metadata lives in pyproject.toml): ship configs/ and tuning/ inside the wheel.

The repository's top-level configs/ and tuning/ stay the source; build_py copies their YAML files to
metaserve/_shipped/ in the build tree, where metaserve.shipped finds them in an installed wheel.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithShipped(build_py):
    def run(self) -> None:
        super().run()
        for kind in ("configs", "tuning"):
            target = Path(self.build_lib) / "metaserve" / "_shipped" / kind
            target.mkdir(parents=True, exist_ok=True)
            for src in sorted((ROOT / kind).glob("*.yaml")):
                shutil.copyfile(src, target / src.name)


setup(cmdclass={"build_py": BuildPyWithShipped})
