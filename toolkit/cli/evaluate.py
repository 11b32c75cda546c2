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
    from toolkit.evaluation import markdown_table, rich_table
    from toolkit.io import write_json, write_text
    from toolkit.pipelines.detector import evaluate_detector

    with user_errors():
        rep = evaluate_detector(run, data, cache_dir=cache_dir)
    stem = report or run / "eval"
    write_json(stem.with_suffix(".json"), rep)
    write_text(stem.with_suffix(".md"), markdown_table({run.name: rep}))
    if rep["skipped"]:
        from toolkit.data.images import Skipped
        from toolkit.outputs import write_skipped_csv

        csv = write_skipped_csv(stem.with_name(stem.name + ".skipped.csv"), [Skipped(**s) for s in rep["skipped"]])
        out.print(f"[yellow]{len(rep['skipped'])} unreadable image(s) skipped: see {csv}")
    out.print(rich_table({run.name: rep}))
    out.print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
