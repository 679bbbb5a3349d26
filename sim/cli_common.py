"""Error handling shared by the CLI modules: one-line messages and exit code 2, never a traceback."""
from __future__ import annotations

import functools
from typing import Callable

import typer

from sim.config import ConfigError


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` to stderr and exit with ``code``."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def guard(extra: Callable[[], tuple[type[Exception], ...]] = tuple):
    """Decorator: ConfigError, FileNotFoundError and the exceptions ``extra()`` names become one line."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            handled = (ConfigError,) + tuple(extra())
            try:
                return fn(*a, **kw)
            except handled as e:
                fail(str(e))
            except FileNotFoundError as e:
                fail(f"{e.filename}: no such file")
        return wrapper
    return deco
