"""Every ``natdeploy ...`` example in README.md and in each command's ``--help`` epilog runs.

The examples run in order (the epilogs' in the order of ``natdeploy --help``, then the README's that are left)
as ``python -m natdeploy ...`` in one temporary working folder, so that runs/, bundles/ and tables/ land there,
with ``NATDEPLOY_TABLES`` pointing at a copy of latency_tables/ there. Order matters: the small search example
writes runs/cpu-small-s0, which the export examples (and the README's) then export.

Checked for parsing only:
- examples that need a phone (adb) or a GPU (cuda) device spec;
- the ones in ``EXPENSIVE``, each with its reason. The README's main command (~3 minutes on 2 cores) is one;
  ``benchmarks/main_command.py`` times it.
Examples in ``SLOW`` are real and cheap by their flags, but train or convert models for minutes on a shared
2-core machine; they run with ``NATDEPLOY_RUN_SLOW_EXAMPLES=1`` and are checked for parsing otherwise.
Examples that read ``../shared/data`` skip when that folder is absent.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natdeploy.cli import build_parser
from natdeploy.devices import known_devices, load_device

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

EXPENSIVE = {
    "natdeploy search --device cpu --max-latency 1.5ms --settings quick --resolutions 32":
        "the README's main command: ~3 minutes on 2 cores (benchmarks/main_command.py times it)",
    "natdeploy search --device cpu --max-latency 1.5ms --settings quick":
        "the main command at all the preset's resolutions: longer still",
    "natdeploy search --device cpu --max-latency 30ms --data ./flowers --space ofa":
        "NAT's paper settings at 224 px on the user's own ImageFolder: hours",
    "natdeploy search --device cpu --max-latency 30ms --data ./flowers --space ofa --supernet "
    "ofa_mbv3_d234_e346_k357_w1.0 --accelerator cuda --precision bf16 --workers 8":
        "needs a GPU, OFA's published checkpoint and the user's own ImageFolder",
    "natdeploy profile --device cpu":
        "profiles the whole small space with the spec's 20 timing rounds: tens of minutes",
    "natdeploy profile --device cpu --space ofa --resolutions 160 224 --e2e-samples 50":
        "the OFA space at 224 px: hours",
    "natdeploy export w1.0-r224-3354-7376-3333-5476-7473 --supernet ofa_mbv3_d234_e346_k357_w1.0 "
    "--data ./flowers --device cpu --out bundles/flowers":
        "needs OFA's published checkpoint and the user's own ImageFolder",
}

_TINY = ("--settings quick --resolutions 32 --iterations 1 --warmup-epochs 0 --initial-archs 4 --population 8 "
         "--generations 2 --candidates 2")
SLOW = {
    f"natdeploy search --device cpu --max-latency 2ms {_TINY}": "trains a supernet: over 8 minutes at load 6",
    "natdeploy search --device cpu --max-latency 2ms --settings quick --resume": "resumes that run",
    "natdeploy profile --device cpu-litert --resolutions 32 --e2e-samples 4 --n-classes 10 --out tables/t.json":
        "96 ops timed in 20 rounds: over a minute",
    "natdeploy export runs/cpu-small-s0 --format onnx --parity-images 4 --no-latency": "exports that run",
    "natdeploy export runs/cpu-small-s0 --max-latency 2ms --format tflite --int8 --calibration-images 8 "
    "--out bundles/fast": "exports that run",
    "natdeploy export runs/cpu-small-s0 --arch w1.0-r32-3333-3333-3333-3333-3333 --format onnx": "exports that run",
    "natdeploy export runs/cpu-small-s0 --format tflite,onnx --int8": "exports that run",
    "natdeploy report runs/cpu-small-s0": "reports that run",
    "natdeploy report runs/cpu-small-s0 --out cpu-report.html": "reports that run",
}
RUN_SLOW = os.environ.get("NATDEPLOY_RUN_SLOW_EXAMPLES") == "1"


def _help_examples(parser: argparse.ArgumentParser) -> list[str]:
    """Example lines of this parser's epilog, then of its sub-commands', depth first."""
    lines = [ln.strip() for ln in (parser.epilog or "").splitlines() if ln.strip().startswith("natdeploy ")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                lines += _help_examples(sub)
    return lines


def _readme_examples() -> list[str]:
    lines, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.strip().startswith("natdeploy "):
            lines.append(" ".join(shlex.split(line, comments=True)) if "#" in line else line.strip())
    return lines


HELP_EXAMPLES = _help_examples(build_parser())
README_EXAMPLES = _readme_examples()
EXAMPLES = list(dict.fromkeys(HELP_EXAMPLES + README_EXAMPLES))
HARDWARE = {name for name in known_devices() if load_device(name).transport in ("adb", "cuda")}


def _needs_hardware(argv: list[str]) -> bool:
    return any(tok.split("=", 1)[0] in HARDWARE for tok in argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    work = root / "work"
    shutil.copytree(ROOT / "latency_tables", work / "latency_tables")
    if SHARED_DATA.is_dir():  # ../shared/data from the working folder
        (root / "shared").mkdir()
        (root / "shared" / "data").symlink_to(SHARED_DATA)
    return work


def test_examples_were_found():
    assert len(HELP_EXAMPLES) >= 15 and len(README_EXAMPLES) >= 8
    commands = {line.split()[1] for line in HELP_EXAMPLES}
    assert commands == {"devices", "arch", "profile", "predict", "search", "export", "report", "tables", "supernets"}
    assert set(EXPENSIVE) | set(SLOW) <= set(EXAMPLES), (set(EXPENSIVE) | set(SLOW)) - set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(example: str, workdir: Path):
    argv = shlex.split(example)
    build_parser().parse_args(argv[1:])  # every example parses, whatever else happens
    if _needs_hardware(argv) or example in EXPENSIVE:
        return
    if example in SLOW and not RUN_SLOW:
        pytest.skip(f"parsed only: {SLOW[example]} (NATDEPLOY_RUN_SLOW_EXAMPLES=1 runs it)")
    if "../shared/data" in example and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    env = {**os.environ, "NATDEPLOY_TABLES": str(workdir / "latency_tables"), "NATDEPLOY_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "natdeploy", *argv[1:]], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    print(f"{took:6.1f} s  {example}")
    assert proc.returncode == 0, f"{example}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
