"""Build step that ships the built-in device specs and latency tables inside the package.

The checkout's top-level ``devices/`` and ``latency_tables/`` stay their one source; a wheel (or ``pip install .``)
gets copies in ``natdeploy/_data/``, which :func:`natdeploy.settings.builtin_dir` reads when no checkout is around.
Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA = ("devices", "latency_tables")


class BuildWithData(build_py):
    """build_py, plus the data folders copied to ``natdeploy/_data`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders themselves
        for name in DATA:
            target = Path(self.build_lib) / "natdeploy" / "_data" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(HERE / name, target)


setup(cmdclass={"build_py": BuildWithData})
