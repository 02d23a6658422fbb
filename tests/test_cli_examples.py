"""Every ``natdeploy ...`` example in README.md and in each command's ``--help`` epilog runs.

The epilogs' examples run in the order of ``natdeploy --help`` as ``python -m natdeploy ...`` in one temporary
working folder, so that runs/, bundles/ and tables/ land there, with ``NATDEPLOY_TABLES`` pointing at a copy of
latency_tables/ there. Order matters: the tiny search example writes runs/cpu-small-s0, which the resume, export
and report examples then use. That search is the session's ``tiny_search`` fixture (tests/conftest.py): it runs the
example's very line once through the CLI, other test files use copies of its run, and the working folder here
starts as a copy of the folder it ran in. The README's examples that are left (its main command and its export)
run in a second such copy, as a reader who follows the README has one run and no bundle yet.

Checked for parsing only:
- examples that need a phone (adb) or a GPU (cuda) device spec;
- the ones in ``EXPENSIVE``, each with its reason. The README's main command (~4 minutes on 2 idle cores) is one;
  ``benchmarks/main_command.py`` times it.
Examples that read ``../shared/data`` skip when that folder is absent.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from natdeploy.cli import build_parser
from natdeploy.devices import known_devices, load_device
from tiny_fixtures import TINY_SEARCH, failure, run_natdeploy

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

EXPENSIVE = {
    "natdeploy search --device cpu --max-latency 1.5ms --settings quick --resolutions 32":
        "the README's main command: ~4 minutes on 2 idle cores (benchmarks/main_command.py times it)",
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


def _work_folder(root: Path, tiny_search) -> Path:
    """A copy of the folder the tiny search example ran in, with ../shared/data linked beside it."""
    work = tiny_search.copy_to(root / "work")
    if SHARED_DATA.is_dir():  # ../shared/data from the working folder
        (root / "shared").mkdir()
        (root / "shared" / "data").symlink_to(SHARED_DATA)
    return work


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_search) -> Path:
    return _work_folder(tmp_path_factory.mktemp("examples"), tiny_search)


@pytest.fixture(scope="module")
def readme_workdir(tmp_path_factory, tiny_search) -> Path:
    return _work_folder(tmp_path_factory.mktemp("readme"), tiny_search)


def test_examples_were_found():
    assert len(HELP_EXAMPLES) >= 15 and len(README_EXAMPLES) >= 8
    commands = {line.split()[1] for line in HELP_EXAMPLES}
    assert commands == {"devices", "arch", "profile", "predict", "search", "export", "report", "tables", "supernets"}
    assert set(EXPENSIVE) <= set(EXAMPLES), set(EXPENSIVE) - set(EXAMPLES)
    assert TINY_SEARCH in HELP_EXAMPLES  # the shared run is the help's own example


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(example: str, request):
    argv = shlex.split(example)
    build_parser().parse_args(argv[1:])  # every example parses, whatever else happens
    if _needs_hardware(argv) or example in EXPENSIVE:
        return
    if "../shared/data" in example and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    work = request.getfixturevalue("workdir" if example in HELP_EXAMPLES else "readme_workdir")
    if example == TINY_SEARCH:  # ran once for the session, in the folder this one copies
        tiny_search = request.getfixturevalue("tiny_search")
        assert (work / "runs" / "cpu-small-s0" / "best.json").is_file(), tiny_search.stderr[-3000:]
        print(f"{tiny_search.seconds:6.1f} s  {example}  (the session's tiny_search)")
        return
    proc, took = run_natdeploy(example, work)
    print(f"{took:6.1f} s  {example}")
    assert proc.returncode == 0, failure(example, proc)
