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


GATE_HELP = (
    "override one gate bound, PRECISION.BOUND=VALUE (repeatable), e.g. int8.min_decision_agreement=0.97; fp16, bf16 "
    "and int8 share one policy: max_auc_drop_points 0.5, max_acc_drop_points 1.0, min_decision_agreement 0.98, "
    "min_cosine_feature 0.99 (detector); fp32: max_abs_logit 1e-4 (detector), max_abs_pixel 1e-4 (purifier); "
    "purifier fp16: min_psnr_db 40"
)


def parse_gate_overrides(items: list[str]) -> dict[tuple[str, str], float]:
    """`--gate int8.max_auc_drop_points=0.7` -> {("int8", "max_auc_drop_points"): 0.7}; the kind refuses unknown
    bounds (ModelKind.gates)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        precision, dot, bound = key.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not (eq and dot and precision and bound) or number is None:
            raise ValueError(f"--gate {item!r}: expected PRECISION.BOUND=NUMBER, e.g. int8.max_auc_drop_points=0.7")
        out[(precision, bound.strip())] = number
    return out
