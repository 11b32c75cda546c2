"""Shared CLI helpers: turning library errors into one clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

# wide tables when the output is a log file or a pipe (rich would otherwise wrap at 80 columns)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

# OSErrors that say the machine is in trouble, not the input: exit 1
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def error_line(e: BaseException) -> str:
    """One line: the file (when the error names one) and the problem, printable whatever bytes the name holds."""
    from toolkit.io import display_path

    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, FileNotFoundError):
        return f"{display_path(e.filename)}: {e.strerror or e}"
    return display_path(str(e)).replace("\n", " ")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures print `error: ...` on one line: bad input (paths, files, configs, refused flags) exits 2,
    the environment (disk full, I/O error) exits 1. No traceback either way."""
    try:
        yield
    except OSError as e:
        # a server or cluster that stays unreachable is the environment too
        code = 1 if e.errno in ENVIRONMENT_ERRNOS or isinstance(e, (ConnectionError, TimeoutError)) else 2
        err.print(f"[bold red]error:[/] {_escape(error_line(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(code) from None
    except (ValueError, RuntimeError) as e:
        err.print(f"[bold red]error:[/] {_escape(error_line(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
