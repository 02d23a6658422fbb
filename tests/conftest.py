import os
from pathlib import Path

import pytest

# One thread: this suite runs on 2 shared cores, and single-threaded results are stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (only present beside the project checkout)")
    return SHARED_DATA


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)
