"""One rich progress bar helper shared by every long operation (silent when disabled or not a TTY log)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, **fields)`; shows a rich bar with rate and ETA on stderr."""
    if not enabled:
        yield lambda n=1, **_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            prog.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance
