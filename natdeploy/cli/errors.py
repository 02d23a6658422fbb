"""The one error mapping of the CLI: known errors print one line, anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from natdeploy import __version__, settings
from natdeploy.errors import NatDeployError

USER_ERROR = 2  # the exit code of a NatDeployError (argparse uses 2 for bad flags too)
BUG = 1
INTERRUPTED = 130
BUG_NOTE = ("natdeploy {version}: this is a bug in natdeploy, not in your input. Please report it to the "
            "natdeploy maintainers with the command line and the traceback above.")


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; map what it raises to a message and an exit code.

    A :class:`NatDeployError` prints ``error: <message>``; ``NATDEPLOY_DEBUG=1`` re-raises it instead, with its
    traceback. Any other exception prints its traceback and a note that it is a bug.
    """
    try:
        return func(args)
    except NatDeployError as exc:
        if settings.debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
        return INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(BUG_NOTE.format(version=__version__), file=sys.stderr)
        return BUG
