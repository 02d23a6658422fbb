import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# One thread: this suite runs on 2 shared cores, and single-threaded results are stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only present beside the project checkout)")
    return SHARED_DATA


@dataclass(frozen=True)
class TinySearch:
    """The working folder the help's tiny search example ran in, how long it took, and what it printed."""

    work: Path  # holds latency_tables/ (NATDEPLOY_TABLES) and runs/cpu-small-s0
    seconds: float
    stderr: str

    @property
    def run(self) -> Path:
        return self.work / "runs" / "cpu-small-s0"

    def copy_to(self, dst: Path) -> Path:
        """A private copy of the whole working folder (tests change runs; this one stays as the example left it)."""
        shutil.copytree(self.work, dst, symlinks=True)
        return dst


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory) -> TinySearch:
    """The help's tiny search example (``tiny_fixtures.TINY_SEARCH``), run once per session through the CLI.

    Training a supernet is the costliest thing the examples do, so every test that needs a finished tiny CLI run
    uses a copy of this one instead of searching again.
    """
    from tiny_fixtures import TINY_SEARCH, failure, run_natdeploy

    work = tmp_path_factory.mktemp("tiny_search") / "work"
    shutil.copytree(ROOT / "latency_tables", work / "latency_tables")
    proc, took = run_natdeploy(TINY_SEARCH, work)
    assert proc.returncode == 0, failure(TINY_SEARCH, proc)
    return TinySearch(work, took, proc.stderr)


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory) -> Path:
    """``tiny_fixtures.tiny_cpu_table`` of ``tiny_space()``, profiled once per session."""
    from tiny_fixtures import tiny_cpu_table, tiny_space

    return tiny_cpu_table(tmp_path_factory.mktemp("tiny_table"), tiny_space())


@dataclass(frozen=True)
class TinyNatRun:
    """A finished two-iteration in-process search: its folder (copy it before changing it), result and budget."""

    run: Path
    result: dict
    budget: float


@pytest.fixture(scope="session")
def tiny_nat_run(tmp_path_factory, tiny_table) -> TinyNatRun:
    """``run_search`` with ``TINY_NAT`` at two iterations on ``tiny_digits()`` and ``tiny_table``, at the median
    budget; test_search.py checks it against a killed-and-resumed run, test_report.py reports on a copy."""
    from natdeploy.latency.predictor import LatencyPredictor
    from natdeploy.search import NATConfig, run_search
    from tiny_fixtures import TINY_NAT, tiny_budget, tiny_digits, tiny_space

    space = tiny_space()
    predictor = LatencyPredictor.load(tiny_table)
    budget = tiny_budget(predictor, space)
    out = tmp_path_factory.mktemp("tiny_nat") / "tiny"
    result = run_search(out, tiny_digits(), {"cpu": predictor}, {"cpu": budget}, space,
                        NATConfig(**{**TINY_NAT, "iterations": 2}))
    return TinyNatRun(out, result, budget)


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)
