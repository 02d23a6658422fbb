"""Small builders several test files share: an ImageFolder of random images, and a quickly profiled tiny table."""

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


def tiny_cpu_table(folder: Path, space) -> Path:
    """A 10-class onnxruntime table of ``space`` at 32 and 40 px, profiled in seconds (5 runs per model)."""
    from natdeploy.devices import load_device
    from natdeploy.latency.profiler import profile_device

    spec = folder / "tcpu.yaml"
    spec.write_text("description: test\ntransport: local\nruntime: onnxruntime\nwarmup: 1\nruns: 5\n"
                    "e2e_warmup: 1\ne2e_runs: 5\n")
    res = profile_device(load_device(str(spec)), space, resolutions=[32, 40], e2e_samples=8, n_classes=10,
                         out=folder / "tcpu.json", quiet=True)
    return res.table_path
