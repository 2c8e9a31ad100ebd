"""What every `hub` command shares: exit codes scripts can trust, and errors without stack traces."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from hub.errors import HubError

#: The command ran and found a problem (a reject, not running, not found).
EXIT_FAILURE = 1
#: Configuration, broker or usage error: nothing was done.
EXIT_USAGE = 2

_P = ParamSpec("_P")
_R = TypeVar("_R")


def reporting_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Print a HubError as its code, message and hint on stderr, and exit 2: never a stack trace."""

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except HubError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper
