"""One NAT search across two gloo processes, started with torchrun as a user starts it, then resumed with one.

The probe (tests/ddp_search_probe.py) runs the real ``natdeploy search`` entry point in every rank and records the
parameters' digest after every training step, every run-folder write, and the final archive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from natdeploy.space import Arch
from tiny_fixtures import image_folder

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "ddp_search_probe.py"
# On a small ImageFolder (80 images: 64 to train on, in 4 steps of 16 an epoch, 16 to validate on): what is checked
# (identical ranks, one writer, the resume) does not depend on the data's size, and the digits' 1,437 training
# images made this file the slowest of the suite.
TINY = ["--device", "cpu", "--max-latency", "2ms", "--settings", "quick", "--resolutions", "32",
        "--warmup-epochs", "0", "--epochs-per-iter", "1", "--initial-archs", "4", "--population", "8",
        "--generations", "2", "--candidates", "2", "--batch-size", "16", "--data", "img", "--quiet",
        "--name", "ddp"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "NATDEPLOY_NO_PROGRESS": "1"}


def torchrun(tmp: Path, nproc: int, flags: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(PROBE),
           str(tmp), "--", "search", *TINY, "--out", str(tmp / "runs"), *flags]
    res = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    image_folder(tmp / "img", n=40)
    return tmp, torchrun(tmp, 2, ["--iterations", "1"])


def test_two_ranks_train_identically_and_end_with_one_archive(two_process_run):
    _, (r0, r1) = two_process_run
    assert r0["digests"] and r0["digests"] == r1["digests"]  # bit-identical parameters after every step
    assert r0["archive"] == r1["archive"] and len(r0["archive"]) >= 4
    assert {e["iteration"] for e in r0["archive"]} == {0, 1}


def test_only_rank_zero_writes_the_run_folder(two_process_run):
    tmp, (r0, r1) = two_process_run
    assert r1["writes"] == []
    assert "write_checkpoint" in r0["writes"] and "write_outputs" in r0["writes"]
    state = json.loads((tmp / "runs" / "ddp" / "state.json").read_text())
    assert state["completed_iteration"] == 1 and len(state["archive"]) == len(r0["archive"])
    steps = [json.loads(line) for line in (tmp / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len([s for s in steps if s["kind"] == "step"]) == len(r0["digests"])  # once, not once per rank


def test_a_two_process_run_resumes_with_one_process(two_process_run):
    tmp, (r0, _) = two_process_run
    (tmp / "rank0.json").unlink()
    (resumed,) = torchrun(tmp, 1, ["--resume", "--iterations", "2"])
    assert len(resumed["archive"]) > len(r0["archive"])
    assert {e["iteration"] for e in resumed["archive"]} == {0, 1, 2}
    state = json.loads((tmp / "runs" / "ddp" / "state.json").read_text())
    assert state["completed_iteration"] == 2


def test_two_widths_train_and_search_together_over_two_processes(tmp_path):
    """NAT's width gene under torchrun: both supernets train identically on both ranks, rank 0 alone writes
    each width's supernet, and both ranks end with one archive over both widths."""
    image_folder(tmp_path / "img", n=40)
    r0, r1 = torchrun(tmp_path, 2, ["--iterations", "1", "--width", "1.0", "1.2"])
    assert r0["digests"] and r0["digests"] == r1["digests"]  # every supernet, after every step of either width
    assert r0["archive"] == r1["archive"]
    assert {Arch.parse(e["arch"]).w for e in r0["archive"]} == {1.0, 1.2}
    assert r1["writes"] == []
    run = tmp_path / "runs" / "ddp"
    assert (run / "supernet-w1.0.pt").is_file() and (run / "supernet-w1.2.pt").is_file()
