"""Shared CLI helpers: turning library errors into one clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures (bad paths, bad files, bad configs) print `error: ...` and exit 2."""
    try:
        yield
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
