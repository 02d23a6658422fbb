"""A wheel installed into a fresh venv, outside the checkout, finds its device specs and latency tables.

The wheel is built once (no build isolation, no network) from a copy of the tracked files; the venv sees the
packages of the environment running the suite (torch and the rest) but gets natdeploy only from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(base / "dist")],
         src)
    wheel = next((base / "dist").glob("natdeploy-*.whl"))
    venv = base / "venv"
    # without a pip of its own (ensurepip costs seconds): the system's pip, which the venv sees, installs into it
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], base)
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # the suite itself runs in a venv, whose packages a venv made from it does not see (it sees the base
        # interpreter's): list them in a .pth file, which adds them after the new venv's own site-packages (so
        # natdeploy still comes from the wheel) and, as a plain path, runs none of their .pth files (so not the
        # checkout's editable install either)
        purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
        outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(purelib.strip(), "outer-environment.pth").write_text("\n".join(sorted(outer)) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], base)
    return python


def test_wheel_ships_specs_and_tables(venv_python, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATDEPLOY_") and k != "PYTHONPATH"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    where = _run([str(venv_python), "-c", "import natdeploy, sys; print(natdeploy.__file__)"], tmp_path, env)
    assert str(venv_python.parent.parent) in where, f"natdeploy came from {where}, not the wheel"
    natdeploy = [str(venv_python.parent / "natdeploy")]  # the console script
    listing = _run(natdeploy + ["devices"], tmp_path, env)
    assert "cpu " in listing and "table" in listing.split("cpu ", 1)[1].splitlines()[0]
    out = _run(natdeploy + ["predict", "--device", "cpu", "--arch", "w1.0-r32-3333-3333-3333-3333-3333"], tmp_path, env)
    assert " ms " in out
    assert not (tmp_path / "xdg").exists()  # reading writes nothing to the user's folder
