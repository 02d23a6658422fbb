"""Wall time of the README's main command, run as the README gives it (a fresh output folder in a temp dir).

Target (issue 5): it finishes in <= 10 minutes on a 2-core machine.

    python benchmarks/main_command.py [--no-record]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from _common import machine_line, record
except ImportError:
    from benchmarks._common import machine_line, record

ROOT = Path(__file__).resolve().parents[1]


def readme_main_command() -> str:
    """The first code block under the README's '## Main command' heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Main command", 1)[1]
    match = re.search(r"```\n(natdeploy .+?)\n```", section, re.S)
    if match is None:
        raise SystemExit("README.md has no natdeploy command under '## Main command'")
    return match.group(1).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    command = readme_main_command()
    with tempfile.TemporaryDirectory() as tmp:
        argv = shlex.split(command) + ["--out", str(Path(tmp) / "run"), "--quiet"]
        env = {**os.environ, "NATDEPLOY_NO_PROGRESS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "natdeploy.cli", *argv[1:]], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    if proc.returncode != 0:
        raise SystemExit(f"the main command failed with exit status {proc.returncode}")
    best = next((line for line in proc.stdout.splitlines() if line.startswith("best within budget")), "")
    body = f"""
Machine: {machine_line(2)}.
Command: `python benchmarks/main_command.py`, which runs the README's main command `{command}` (output to a temp
folder, progress bars off).

**Wall time: {wall / 60:.1f} min** ({wall:.0f} s). Target: <= 10 min on 2 cores. {best}
"""
    print(body)
    if not args.no_record:
        record("main_command", body)


if __name__ == "__main__":
    main()
