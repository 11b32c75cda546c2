"""Shared CLI helpers: turning library errors into one clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

# wide tables when the output is a log file or a pipe (rich would otherwise wrap at 80 columns)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures (bad paths, bad files, bad configs) print `error: ...` and exit 2."""
    try:
        yield
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
