"""The ``natdeploy`` parser and entry point; each command module registers its own sub-parser."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from natdeploy import __version__
from natdeploy.cli import arch, devices, export, predict, profile, report, search, supernets, tables
from natdeploy.cli.errors import run_command
from natdeploy.cli.parsing import Parser, add_common_flags, examples

COMMANDS = (devices, arch, profile, predict, search, export, report, tables, supernets)  # the order of `natdeploy --help`


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports no torch, so ``--help`` and ``--version`` stay fast."""
    ap = Parser(prog="natdeploy", description="Hardware-aware Neural Architecture Transfer.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=examples(
                                     "natdeploy devices",
                                     "natdeploy predict --device cpu --arch w1.0-r32-3333-3333-3333-3333-3333",
                                     "natdeploy arch w1.0-r224-3354-7376-3333-5476-7473 --space ofa -v"))
    ap.add_argument("--version", action="version", version=f"natdeploy {__version__}")
    add_common_flags(ap, top=True)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    module = {c.__name__.rsplit(".", 1)[-1]: c for c in COMMANDS}[args.command]
    return run_command(args.func, args, validate=getattr(module, "validate", None))


if __name__ == "__main__":
    sys.exit(main())
