"""The ``natdeploy`` command line: each command module parses its flags and calls the library.

``parsing`` holds what commands share (latencies, budgets, examples, common flags); ``errors`` maps what a
command raises to a message and an exit code. No library module imports this package.
"""

from natdeploy.cli.app import build_parser, main
from natdeploy.cli.parsing import parse_budget, parse_latency_ms

__all__ = ["main", "build_parser", "parse_latency_ms", "parse_budget"]
