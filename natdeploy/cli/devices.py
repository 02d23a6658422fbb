"""``natdeploy devices``: list the device specs and whether each has a latency table."""

from __future__ import annotations

import argparse

from natdeploy.cli.parsing import add_command, examples

HELP = "List the device specs and whether each has a latency table."


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "devices", HELP, examples("natdeploy devices"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natdeploy.devices import known_devices, load_device
    from natdeploy.latency.store import has_table

    names = known_devices()
    width = max(map(len, names), default=0)
    for name in names:
        spec = load_device(name)
        has = "table" if has_table(name) else "no table"
        print(f"{name:{width}s} {spec.transport:6s} {spec.runtime:12s} {has:9s} {spec.description}")
    return 0
