"""`toolkit eval`: a trained run + labelled folder -> per-generator JSON and Markdown report."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def eval_command(
    run: Path = typer.Argument(..., help="run directory from 'toolkit train detector'"),
    data: Path = typer.Argument(..., help="labelled test folder; one sub-folder per generator"),
    report: Path | None = typer.Option(None, help="report path stem (default RUN/eval): writes .json and .md"),
    cache_dir: Path | None = typer.Option(None, help="feature cache directory"),
) -> None:
    """Evaluate a detector per generator at its fixed threshold.

    Example: toolkit eval runs/causal data/embedded/test
    """
    from toolkit.evaluation import rich_table
    from toolkit.pipelines.detector import evaluate_to_files

    with user_errors():
        rep, files = evaluate_to_files(run, data, report, cache_dir=cache_dir)
    if "skipped" in files:
        out.print(f"[yellow]{len(rep['skipped'])} unreadable image(s) skipped: see {files['skipped']}")
    out.print(rich_table({run.name: rep}))
    out.print(f"wrote {files['json']} and {files['md']}")
