"""The one error mapping of the CLI: known errors print one line, anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from natdeploy import __version__, settings
from natdeploy.errors import ConfigError, NatDeployError

USER_ERROR = 2  # the exit code of a NatDeployError (argparse uses 2 for bad flags too)
BUG = 1
INTERRUPTED = 130
CLOSED_PIPE = 141  # what a shell reports for a command killed by SIGPIPE (128 + 13)
BUG_NOTE = ("natdeploy {version}: this is a bug in natdeploy, not in your input. Please report it to the "
            "natdeploy maintainers with the command line and the traceback above.")


# What to do after Ctrl-C, per command (the documented way to continue; tests/test_bad_input.py runs it).
RESUME_HINTS = {
    "search": "interrupted; the run keeps its last checkpoint: continue it with the same command plus --resume",
    "profile": "interrupted; the measured ops are kept: rerun the same command to continue where it stopped",
    "export": "interrupted; nothing was published: rerun the same command to export again",
}
# A search stopped before its first checkpoint has nothing to resume (--resume would refuse it).
UNSTARTED_SEARCH_HINT = "interrupted before the run's first checkpoint: rerun the same command to start it"


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
         validate: Optional[Callable[[argparse.Namespace], None]]) -> int:
    """Validate the flags (before any slow work), then run the command with its table locations in effect."""
    folder = getattr(args, "tables", None)
    creates = getattr(args, "command", None) == "profile" or getattr(args, "tables_command", None) == "import-ofa"
    if folder and not creates and not Path(folder).is_dir():
        raise ConfigError(f"--tables {folder} is not a folder; give the folder that holds your latency tables")
    if not folder:
        if validate is not None:
            validate(args)
        if not getattr(args, "table_files", None):
            return func(args)
    from natdeploy.latency.store import table_locations

    if folder and validate is not None:
        with table_locations(folder=folder):
            validate(args)
    with table_locations(folder=folder, files=getattr(args, "table_files", None)):
        return func(args)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                validate: Optional[Callable[[argparse.Namespace], None]] = None) -> int:
    """Run one command (after ``validate(args)``, where given); map what it raises to a message and an exit code.

    A :class:`NatDeployError` prints ``error: <message>``; ``NATDEPLOY_DEBUG=1`` re-raises it instead, with its
    traceback. Any other exception prints its traceback and a note that it is a bug.
    """
    try:
        return _run(func, args, validate)
    except NatDeployError as exc:
        if settings.debug():
            raise
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt as exc:  # a command may set ``exc.hint`` where the usual one would mislead
        hint = getattr(exc, "hint", None) or RESUME_HINTS.get(getattr(args, "command", None) or "",
                                                              "interrupted; nothing more was done")
        print(hint, file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (`natdeploy devices | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return CLOSED_PIPE
    except Exception:
        traceback.print_exc()
        print(BUG_NOTE.format(version=__version__), file=sys.stderr)
        return BUG
