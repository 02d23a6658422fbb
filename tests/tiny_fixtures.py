"""Small builders several test files share: an ImageFolder of random images, a quickly profiled tiny table, the
tiny in-process NAT settings and data, and the help's tiny search example with a runner for ``natdeploy`` lines.

tests/conftest.py makes the costly ones once per session (``tiny_table``, ``tiny_nat_run``, ``tiny_search``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def image_folder(root: Path, classes: Sequence[str] = ("cat", "dog"), n: int = 6, size: int = 20) -> Path:
    """``root/<class>/<i>.png``: ``n`` seeded random non-square images per class."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


# The tiny in-process search of test_search.py and test_report.py: 64 digits at 40 px, the "tiny" space below.
TINY_NAT = dict(iterations=1, initial_archs=4, population=8, generations=2, candidates_per_iter=2, top_archs=8,
                subnets_per_step=1, epochs_per_iter=1, warmup_epochs=1, batch_size=32, bn_batches=1, val_limit=32)


def tiny_space():
    """The two-resolution, one-width space the tiny table and the tiny in-process search use."""
    from natdeploy.space import SearchSpace

    return SearchSpace(resolutions=(32, 40), widths=(1.0,), name="tiny")


def tiny_digits():
    """The first 64 training digits at 40 px (and the whole validation split)."""
    from natdeploy.data import load_digits_data

    d = load_digits_data(size=40)
    d.train_x, d.train_y = d.train_x[:64], d.train_y[:64]
    return d


def tiny_budget(predictor, space) -> float:
    """The median predicted latency of 50 seeded subnets: a budget that half the space meets."""
    return float(np.median(predictor.predict(space.sample(np.random.default_rng(0), 50))))


TINY_TABLE_E2E = 8  # whole subnets the tiny table measures


def tiny_cpu_table(folder: Path, space) -> Path:
    """A 10-class onnxruntime table of ``space`` at 32 and 40 px, profiled in seconds (5 runs per model)."""
    from natdeploy.devices import load_device
    from natdeploy.latency.profiler import profile_device

    spec = folder / "tcpu.yaml"
    spec.write_text("description: test\ntransport: local\nruntime: onnxruntime\nwarmup: 1\nruns: 5\n"
                    "e2e_warmup: 1\ne2e_runs: 5\n")
    res = profile_device(load_device(str(spec)), space, resolutions=[32, 40], e2e_samples=TINY_TABLE_E2E,
                         n_classes=10, out=folder / "tcpu.json", quiet=True)
    return res.table_path


# The help's tiny search example (natdeploy/cli/search.py): run once per session by tests/conftest.py's
# ``tiny_search`` fixture, which the examples test and the bad-input battery share.
TINY_SEARCH = ("natdeploy search --device cpu --max-latency 2ms --settings quick --resolutions 32 --iterations 1 "
               "--warmup-epochs 0 --initial-archs 4 --population 8 --generations 2 --candidates 2")
ROOT = Path(__file__).resolve().parent.parent


def run_natdeploy(example: str, work: Path, timeout: float = 600):
    """Run one ``natdeploy ...`` line as ``python -m natdeploy`` in ``work``, on the tables in ``work/latency_tables``.

    Returns ``(CompletedProcess, seconds)``. This tree comes first on the child's path, as in the parent.
    """
    import os
    import shlex
    import subprocess
    import sys
    import time

    argv = shlex.split(example)
    env = {**os.environ, "NATDEPLOY_TABLES": str(work / "latency_tables"), "NATDEPLOY_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "natdeploy", *argv[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def failure(example: str, proc) -> str:
    """The assertion message for a failed example: its line and the tails of its output."""
    return f"{example}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
