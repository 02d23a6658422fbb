"""Writes tests/data/prediction_baseline.json: what natdeploy predicted before the seams refactor (issue 14).

Run once, at the commit the file names, from the project root: ``python tests/make_prediction_baseline.py``.
tests/test_prediction_baseline.py then checks that today's code predicts the same values within 1e-9.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "prediction_baseline.json"
NOTE10 = ROOT.parent / "shared" / "data" / "ofa_note10_lut"
N_PER_PRESET = 1000


def archs_for(preset: str, seed: int) -> list[str]:
    from natdeploy.space import SearchSpace

    space = SearchSpace.preset(preset)
    return [str(a) for a in space.sample(np.random.default_rng(seed), N_PER_PRESET)]


def main() -> None:
    from natdeploy.latency.ofa_import import import_ofa_tables
    from natdeploy.latency.predictor import LatencyPredictor
    from natdeploy.space import Arch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cases = {"cpu": ("small", "nat"), "cpu-litert": ("small", "nat"), "note10": ("ofa", "nat")}
    out = {"commit": commit, "n_classes": 1000, "cases": {}}
    for device, presets in cases.items():
        if device == "note10":
            pred = LatencyPredictor.fit(import_ofa_tables(NOTE10, "note10"))
        else:
            pred = LatencyPredictor.load(ROOT / "latency_tables" / f"{device}.json")
        for i, preset in enumerate(presets):
            archs = archs_for(preset, seed=1000 + i)
            values = pred.predict([Arch.parse(a) for a in archs], n_classes=1000)
            out["cases"][f"{device}/{preset}"] = {"archs": archs, "ms": [float(v) for v in values]}
            print(f"{device}/{preset}: {len(archs)} archs, median {np.median(values):.4f} ms")
    OUT.write_text(json.dumps(out) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
