"""Run ``natdeploy search`` under torchrun, recording what each rank did (for tests/test_ddp_search.py).

``torchrun ... tests/ddp_search_probe.py OUT_DIR -- <natdeploy search flags>`` calls the real CLI entry point; it
only wraps three seams to observe them: the parameters' digest after every training step, every write to the run
folder, and the archive the search ends with. Each rank saves them to OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from natdeploy.cli import main
from natdeploy.run_folder import RunFolder
from natdeploy.search.nat import NATSearch

RANK = int(os.environ.get("RANK", "0"))
seen: dict = {"rank": RANK, "digests": [], "writes": [], "archive": None}


def _digest(net) -> str:
    h = hashlib.sha256()
    for p in net.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _watch_writes(name: str) -> None:
    original = getattr(RunFolder, name)

    def wrapped(self, *args, **kwargs):
        seen["writes"].append(name)
        return original(self, *args, **kwargs)

    setattr(RunFolder, name, wrapped)


for _name in ("write_checkpoint", "write_outputs", "write_phase", "append_metrics"):
    _watch_writes(_name)

_phase_args = NATSearch._phase_args


def _observed_phase_args(self, tag, emit, **kwargs):
    args = _phase_args(self, tag, emit, **kwargs)
    on_step = args["on_step"]

    def step(info):
        on_step(info)
        seen["digests"].append("".join(_digest(self.supernets[w]) for w in sorted(self.supernets)))

    return {**args, "on_step": step}


NATSearch._phase_args = _observed_phase_args
_run = NATSearch.run


def _observed_run(self, on_event=None):
    archive = _run(self, on_event)
    seen["archive"] = [asdict(e) for e in archive]
    return archive


NATSearch.run = _observed_run

if __name__ == "__main__":
    out = Path(sys.argv[1])
    rc = main(sys.argv[3:])
    (out / f"rank{RANK}.json").write_text(json.dumps(seen))
    sys.exit(rc)
