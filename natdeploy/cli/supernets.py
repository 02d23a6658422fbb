"""``natdeploy supernets``: OFA's published supernets by name, and which are in the local cache."""

from __future__ import annotations

import argparse

from natdeploy.cli.parsing import add_command, examples

HELP = "List the supernets known by name (OFA's published checkpoints) and which are cached."


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "supernets", HELP, examples("natdeploy supernets"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.supernet.hub import list_supernets

    for info in list_supernets():
        where = f"cached at {info.path} ({info.size / 2**20:.1f} MiB)" if info.cached else f"not cached ({info.url})"
        print(f"{info.name:32s} w{info.width}  {where}")
    return 0
