"""What ``factory-agent`` and ``factory-sim`` share on the command line.

A user's mistake is printed as one clear message, without a traceback, with exit code 2;
Ctrl-C is 130; a closed pipe (``... | head``) is a normal end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from connectors.validation import ConfigErrors


class UsageError(Exception):
    """A user's mistake: printed without a traceback, exit code 2."""


def run_command(
    prog: str, call: Callable[[], int], user_errors: tuple[type[BaseException], ...] = ()
) -> int:
    """Run one subcommand; turn the user's mistakes into a message and exit code 2."""
    expected: tuple[type[BaseException], ...] = (UsageError, *user_errors)
    try:
        return call()
    except ConfigErrors as exc:
        sys.stderr.write(exc.render() + "\n")
        return 2
    except expected as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader has all it wanted
        sys.stderr.close()
        return 0
