"""``natdeploy report``: write a run's self-contained report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from natdeploy.cli.parsing import add_command, examples

HELP = "Write a run's self-contained report.html: fronts per iteration, the best subnets, tau, hypervolume, tables."


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", HELP, examples("natdeploy report runs/cpu-small-s0",
                                                  "natdeploy report runs/cpu-small-s0 --out cpu-report.html"))
    p.add_argument("run_dir", help="a run folder written by `natdeploy search`")
    p.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.search.html_report import write_report

    path = write_report(Path(args.run_dir), out=Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0
