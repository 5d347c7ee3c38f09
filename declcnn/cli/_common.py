"""What every command shares: user errors become one paragraph on stderr and exit code 1."""

from __future__ import annotations

import functools
import sys
import warnings

import click

from ..errors import DeclcnnError, DeclcnnWarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DeclcnnWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning


def user_errors(func):
    """Run a command body; a ``DeclcnnError`` is printed without a traceback and exits 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", DeclcnnWarning)
                warnings.showwarning = _show_warning
                return func(*args, **kwargs)
        except DeclcnnError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except MemoryError:
            click.echo("error: out of memory; try a smaller --batch-size or input.", err=True)
            sys.exit(1)

    return wrapper
