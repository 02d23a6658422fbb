"""Shared parsing for every command: latencies and budgets (one grammar), examples in --help, common flags."""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Callable, NoReturn, Sequence

from natdeploy.errors import ConfigError

_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}
_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:e[-+]?\d+)?"
# A negative value such as -5ms is a value, not an option: argparse then hands it to the flag, which refuses it
# with a clear message instead of "expected at least one argument".
_NEGATIVE_VALUE = re.compile(r"^-[0-9]*\.?[0-9]+(?:e[-+]?\d+)?(?:ms|s|us|px)?$", re.I)
MAX_LATENCY_MS = 1e7  # about three hours: anything above is a typo, not a budget


class Parser(argparse.ArgumentParser):
    """argparse with natdeploy's error style: one line on stderr (no usage block), exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def parse_latency_ms(text: str) -> float:
    """``30ms``, ``0.03s``, ``30000us`` or a plain ``30`` (milliseconds) -> milliseconds."""
    m = re.fullmatch(rf"\s*({_NUMBER})\s*(ms|s|us)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"cannot read latency {text!r}; write it like 30ms, 0.03s, 30000us or 30 (milliseconds)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not value > 0:
        raise ConfigError(f"latency {text!r} must be positive")
    if not math.isfinite(value) or value > MAX_LATENCY_MS:
        raise ConfigError(f"latency {text!r} is too large to be a budget (at most {MAX_LATENCY_MS:g} ms)")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``; the message names the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            want = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {value}")
        return value

    parse.__name__ = "integer"
    parse.low = low  # type: ignore[attr-defined]  # tests/test_bad_input.py derives its out-of-range values
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0, 2**32 - 1)  # numpy's seeds


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


def looks_like_path(text: str) -> bool:
    """Whether ``text`` reads as a file path rather than an Arch string or JSON dict."""
    text = str(text).strip()
    return not text.startswith("{") and ("/" in text or "\\" in text or text.endswith((".json", ".config", ".pth",
                                                                                   ".pt", ".yaml")))


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
    p.add_argument("--tables", metavar="DIR", default=None if top else argparse.SUPPRESS,
                   help="latency-table folder: read first, and where new tables go (also NATDEPLOY_TABLES; "
                        "default: read your data folder, then the built-in tables)")


def add_table_flag(p: argparse.ArgumentParser) -> None:
    """``--table [DEVICE=]PATH`` (repeatable): the table of a device, instead of the one found by name."""
    p.add_argument("--table", action="append", metavar="[DEVICE=]PATH",
                   help="latency table of a device (repeatable; a plain PATH serves the one device, or the table's own "
                        "device)")


def table_files(values: Sequence[str] | None, devices: Sequence[str] | None = None) -> dict[str, str]:
    """``--table`` values -> ``{device: path}``; a plain path names the table's device, or the only device."""
    out: dict[str, str] = {}
    for value in values or ():
        device, sep, path = value.partition("=")
        if not sep:
            path, device = value, ""
        if not device:
            if devices is not None and len(devices) == 1:
                device = devices[0]
            else:
                from natdeploy.latency.table import LatencyTable  # light: JSON only
                device = LatencyTable.load(path).device
        if devices is not None and device not in devices:
            raise ConfigError(f"--table {value}: {device!r} is not a --device of this command {list(devices)}")
        out[device] = path
    return out


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
    if looks_like_path(text):
        raise ConfigError(f"{text!r} does not exist: give an existing file or folder, or an Arch string such as "
                          "w1.0-r224-3333-3333-3333-3333-3333")
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


def check_resolutions(space: str, resolutions: Sequence[int] | None, flag: str = "--resolutions") -> None:
    """Refuse resolutions outside the preset's span (a 32 px NAT run, say): the supernet and the tables of a preset
    are made for its range."""
    from natdeploy.space import SearchSpace

    preset = SearchSpace.preset(space)
    low, high = min(preset.resolutions), max(preset.resolutions)
    outside = [r for r in resolutions or () if not low <= r <= high]
    if outside:
        raise ConfigError(f"{flag} {' '.join(map(str, outside))} is outside the {space!r} preset's {low}..{high} px; "
                          "choose resolutions in that range, or another --space (small: 32..64, ofa: 128..224, "
                          "nat: 192..256)")
