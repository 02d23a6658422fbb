"""Ctrl-C (SIGINT) and SIGKILL during ``natdeploy search``, ``profile`` and ``export``, each followed by the
documented way to continue, which must then work (issue 16).

Each command runs as the real CLI (``python -m natdeploy``) in its own process group, as a terminal runs it, with
tiny settings. A test waits until the command has demonstrably started its long phase (a line on stderr, a record in
the run folder, ops in the table), then signals it:

- SIGINT goes to the whole group, as Ctrl-C does. The command must exit 130 with no traceback, its last line on
  stderr the command's hint from ``RESUME_HINTS`` (the exact way to continue).
- SIGKILL goes to the main process alone, as the OOM killer does. What it wrote must be readable and consistent.

The continuations are chained to keep the tests cheap: the first continuation (after SIGINT) is itself killed,
and the second (after SIGKILL) must finish.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from natdeploy.cli.errors import INTERRUPTED, RESUME_HINTS, UNSTARTED_SEARCH_HINT
from tiny_fixtures import image_folder

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 300.0  # the longest a marker may take on a loaded 2-core machine
# The tiny search of test_cli_examples.py, on 16 training images in batches of 2: 8 steps of adaptation.
SEARCH = ["search", "--device", "cpu", "--max-latency", "2ms", "--settings", "quick", "--resolutions", "32",
          "--iterations", "1", "--warmup-epochs", "0", "--initial-archs", "4", "--population", "8", "--generations",
          "2", "--candidates", "2", "--batch-size", "2", "--out", "runs", "--name", "r"]
PROFILE = ["profile", "--device", "tcpu.yaml", "--resolutions", "32", "--e2e-samples", "4", "--n-classes", "10",
           "--out", "t.json"]
TINY_SPEC = "description: test\ntransport: local\nruntime: onnxruntime\nwarmup: 1\nruns: 5\ne2e_warmup: 1\ne2e_runs: 5\n"


class Cli:
    """One ``python -m natdeploy`` process in ``cwd``, its stdout and stderr in files (readable while it runs)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
        self.args, self.cwd = args, cwd
        self.err_path, self.out_path = cwd / f"{name}.err", cwd / f"{name}.out"
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "natdeploy", *args], cwd=cwd, env=env, stdout=out,
                                         stderr=err, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll until ``ready()``; fail, with the command's stderr, if it ends first or takes too long."""
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"{' '.join(self.args)} ended (exit {self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{what} did not happen within {WAIT_S:.0f} s:\n{self.stderr}")
            time.sleep(0.05)

    def interrupt(self, hint: Callable[[], str] | None = None) -> str:
        """Ctrl-C: SIGINT to the process group; returns stderr after asserting the documented reaction, whose
        last line is ``hint()`` (default: the command's entry in RESUME_HINTS)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        rc = self.proc.wait(timeout=WAIT_S)
        err = self.stderr
        assert rc == INTERRUPTED, err
        assert "Traceback" not in err, err
        assert err.strip().splitlines()[-1] == (hint() if hint else RESUME_HINTS[self.args[0]]), err
        return err

    def kill(self) -> None:
        """SIGKILL to the main process, then to anything it left in its group."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=WAIT_S) == -signal.SIGKILL
        self.stop()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=WAIT_S)

    def finish(self) -> str:
        """Wait for a successful end; returns stderr."""
        rc = self.proc.wait(timeout=WAIT_S)
        assert rc == 0, self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        return self.stderr


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A working folder with a tiny ImageFolder (2 classes of 10), the tiny device spec and a copy of the tables."""
    cwd = tmp_path_factory.mktemp("signals")
    image_folder(cwd / "img", n=10)
    (cwd / "tcpu.yaml").write_text(TINY_SPEC)
    shutil.copytree(ROOT / "latency_tables", cwd / "latency_tables")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "NATDEPLOY_NO_PROGRESS": "1", "NATDEPLOY_TABLES": str(cwd / "latency_tables"),
           "XDG_DATA_HOME": str(cwd / "xdg"), "OMP_NUM_THREADS": "1"}
    env.pop("NATDEPLOY_DEBUG", None)
    return cwd, env


def _hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes (``.name.*.tmp``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


def _steps(run: Path, phase: str) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if f'"phase": "{phase}"' in line)


@pytest.fixture(scope="module")
def search_run(workspace) -> Path:
    """The tiny search, interrupted with Ctrl-C during adaptation, resumed with ``--resume`` and killed during
    adaptation again, then resumed to its end. Returns the finished run folder (which the export test uses)."""
    cwd, env = workspace
    run = cwd / "runs" / "r"
    args = [*SEARCH, "--data", "img"]
    first = Cli(args, cwd, env, "search1")
    # the run-time estimate comes after the 4th of 8 adaptation steps, well inside the phase
    first.wait_for("the run-time estimate", lambda: "estimated total: ~" in first.stderr)
    err = first.interrupt()
    assert "--settings quick (1 iteration); lower --iterations" in err
    assert json.loads((run / "state.json").read_text())["completed_iteration"] == 0

    second = Cli([*args, "--resume"], cwd, env, "search2")
    before = _steps(run, "adapt-1")
    second.wait_for("a training step of the resumed run", lambda: _steps(run, "adapt-1") > before)
    second.kill()
    from natdeploy.run_folder import RunFolder

    folder = RunFolder(run)
    state = folder.read_state()  # readable, of the last committed iteration, with its own supernet
    assert state.completed_iteration == 0
    folder.load_supernet(state)
    archive = [json.loads(line) for line in (run / "archive.jsonl").read_text().splitlines()]
    assert [e["arch"] for e in archive] == [e.arch for e in state.archive]
    assert _hidden_leftovers(run) == []

    third = Cli([*args, "--resume"], cwd, env, "search3")
    third.finish()
    assert "best within budget" in third.stdout
    assert json.loads((run / "state.json").read_text())["completed_iteration"] == 1
    assert (run / "best.json").is_file() and not (run / "phase.pt").exists()
    return run


def test_search_continues_after_ctrl_c_and_sigkill(search_run):
    state = json.loads((search_run / "state.json").read_text())
    assert len(state["archive"]) >= 5 and {e["iteration"] for e in state["archive"]} == {0, 1}


def test_ctrl_c_before_the_first_checkpoint_says_to_rerun(workspace):
    cwd, env = workspace
    early = Cli([*SEARCH[:-1], "early", "--data", "img"], cwd, env, "early")
    early.wait_for("data loading", lambda: "data loading" in early.stderr)
    run = cwd / "runs" / "early"
    # --resume needs a committed state; before it, the same command starts the run
    early.interrupt(lambda: RESUME_HINTS["search"] if (run / "state.json").exists() else UNSTARTED_SEARCH_HINT)


def test_profile_continues_after_ctrl_c_and_sigkill(workspace):
    from natdeploy.latency.ops import CLASSIFIER_LADDER
    from natdeploy.latency.table import LatencyTable

    cwd, env = workspace
    table = cwd / "t.json"

    def ops() -> int:
        try:
            return len(LatencyTable.load(table).ops) if table.is_file() else 0
        except Exception:  # noqa: BLE001 - only while polling: the final checks load it strictly
            return 0

    first = Cli(PROFILE, cwd, env, "profile1")
    first.wait_for("3 measured ops in the table", lambda: ops() >= 3)
    first.interrupt()
    kept = len(LatencyTable.load(table).ops)
    assert kept >= 3

    second = Cli(PROFILE, cwd, env, "profile2")  # the documented continuation: the same command
    second.wait_for("more ops measured", lambda: ops() > kept)
    second.kill()
    kept = len(LatencyTable.load(table).ops)  # whatever the kill interrupted, the table reads back whole
    assert _hidden_leftovers(cwd) == []
    assert f"resuming {table.name}" in second.stderr

    third = Cli(PROFILE, cwd, env, "profile3")
    third.finish()
    final = LatencyTable.load(table)
    n_ops = 96 + len(CLASSIFIER_LADDER) - 1  # the space's ops, and the classifier at the ladder's other counts
    assert len(final.ops) == n_ops and len(final.e2e) == 4
    assert f"{n_ops} ops ({n_ops - kept} measured now)" in third.stdout
    assert (cwd / "t.xgb.json").is_file()


def test_export_publishes_nothing_when_interrupted_and_a_rerun_works(workspace, search_run):
    cwd, env = workspace
    args = ["export", str(search_run), "--format", "onnx", "--parity-images", "4", "--no-latency",
            "--out", "bundles/b"]
    bundles = cwd / "bundles"

    def nothing_published() -> None:
        assert not (bundles / "b").exists() and not (bundles / "b.zip").exists()
        assert not bundles.exists() or _hidden_leftovers(bundles) == []

    first = Cli(args, cwd, env, "export1")
    first.wait_for("the subnet's extraction", lambda: "[natdeploy] extracting" in first.stderr)
    first.interrupt()
    nothing_published()

    second = Cli(args, cwd, env, "export2")  # the documented continuation: the same command
    second.wait_for("the ONNX export", lambda: "[natdeploy] exporting ONNX" in second.stderr)
    second.kill()
    nothing_published()

    third = Cli(args, cwd, env, "export3")
    third.finish()
    assert (bundles / "b" / "model.onnx").is_file() and (bundles / "b.zip").is_file()
    assert "exported" in third.stdout
