"""The prepared GPU check (issue 15) runs end to end on a CPU with --dry-run, as it will on the GPU machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("device", "step_breakdown", "train_fp32", "train_bf16", "data_pipeline", "cuda_table", "paper_iteration",
            "end_to_end")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_runs_every_section():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NATDEPLOY_NO_PROGRESS": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for section in SECTIONS:
        line = next((ln for ln in lines if ln.startswith(f"[{section}] ")), None)
        assert line is not None and '"error"' not in line, (section, proc.stdout[-2000:])
    assert any(ln.startswith("bf16/fp32 training speed:") for ln in lines)
