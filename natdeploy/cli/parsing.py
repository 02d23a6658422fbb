"""Shared parsing for every command: latencies and budgets (one grammar), examples in --help, common flags."""

from __future__ import annotations

import argparse
import re
from typing import Sequence

from natdeploy.errors import ConfigError

_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}


def parse_latency_ms(text: str) -> float:
    """``30ms``, ``0.03s``, ``30000us`` or a plain ``30`` (milliseconds) -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s|us)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"cannot read latency {text!r}; write it like 30ms, 0.03s, 30000us or 30 (milliseconds)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if value <= 0:
        raise ConfigError(f"latency {text!r} must be positive")
    return value


def parse_budget(values: Sequence[str] | None, flag: str,
                 devices: Sequence[str] | None = None) -> float | dict[str, float] | None:
    """A latency budget flag: ``30ms`` (every device) -> 30.0; ``DEVICE=30ms ...`` -> a mapping; no value -> None.

    With ``devices`` (the search's), named devices must be among them and several plain values are taken one
    per device in order; without (export: the run's devices are not known yet) only one plain value is allowed.
    """
    if not values:
        return None
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise ConfigError(f"mix of DEVICE=budget and plain budgets in {flag}; use one form")
    if named:
        out = {}
        for dev, val in (v.split("=", 1) for v in named):
            if devices is not None and dev not in devices:
                raise ConfigError(f"{flag} names {dev!r}, which is not a --device of this search {list(devices)}")
            out[dev] = parse_latency_ms(val)
        return out
    if len(values) == 1:
        return parse_latency_ms(values[0])
    if devices is None:
        raise ConfigError(f"{len(values)} plain {flag} values; give one (every device) or DEVICE=budget each")
    if len(values) != len(devices):
        raise ConfigError(f"{len(values)} {flag} values for {len(devices)} devices; give one, one per "
                          "device in order, or DEVICE=budget")
    return {d: parse_latency_ms(v) for d, v in zip(devices, values)}


def per_device(budget: float | dict[str, float] | None, devices: Sequence[str]) -> dict[str, float]:
    """A parsed budget as ``{device: ms}``: a number applies to every device, None to none."""
    if budget is None:
        return {}
    if isinstance(budget, dict):
        return dict(budget)
    return {d: budget for d in devices}


def examples(*lines: str) -> str:
    """The ``examples:`` epilog of a command's --help; tests/test_cli_examples.py runs every line."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_common_flags(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v/--verbose`` and ``--quiet``, accepted before and after the command.

    Below the top level the defaults are SUPPRESS, so a subcommand only sets them when they are given there.
    """
    default = False if top else argparse.SUPPRESS
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log more")
    p.add_argument("--quiet", action="store_true", default=default,
                   help="no progress bars or progress messages (also NATDEPLOY_NO_PROGRESS=1)")


def add_command(sub: argparse._SubParsersAction, name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
    """A command's parser: its help as description, its examples as epilog, and the common flags."""
    p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    return p


RESOLUTION_HELP = "input resolution for an OFA net.config ARCH (that file records none)"


def read_arch(text: str, resolution: int | None = None):
    """An Arch from an Arch string, a JSON dict, or the path of an OFA ``net.config`` (either of OFA's layouts; its
    resolution from ``resolution``, else the file or a ``run.config`` beside it)."""
    from pathlib import Path

    from natdeploy.space import Arch

    if Path(text).is_file():
        return Arch.from_ofa_file(text, resolution=resolution)
    if resolution is not None:
        raise ConfigError(f"--resolution applies to an OFA net.config file; {text!r} is no file (an Arch string "
                          "names its own resolution: w1.0-r<R>-...)")
    return Arch.parse(text)


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, flag: str) -> int:
    """``8GB``, ``500MB``, ``2GiB`` or a plain number of bytes -> bytes (positive)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ConfigError(f"{flag} {text!r}: write a size like 8GB, 500MB or 2GiB")
    value = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise ConfigError(f"{flag} {text!r} must be positive")
    return value
