"""`toolkit eval`: a trained run (or an artifact) + labelled folder -> per-generator report, or with --perturb
a robustness matrix (JSON, Markdown, PNG)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def eval_command(
    target: Path = typer.Argument(..., help="run directory from 'toolkit train detector', or a detector artifact"),
    data: Path = typer.Argument(..., help="labelled test folder; one sub-folder per generator"),
    report: Path | None = typer.Option(
        None,
        help="report stem (default RUN/eval; with --perturb RUN/robustness; an artifact: ARTIFACT/bench/robustness)",
    ),
    cache_dir: Path | None = typer.Option(None, help="feature cache directory (run evaluation without --perturb)"),
    perturb: list[str] = typer.Option(
        [], help="robustness axis op:v1,v2,... (repeatable): jpeg:100,90,...,30 | blur:0,1,2,3,4 | resize:0.5,0.25"
    ),
    engine: str = typer.Option("onnxruntime", help="artifact: torch | onnxruntime | openvino | trt"),
    precision: str = typer.Option("fp32", help="artifact: fp32 | fp16 | int8 | bf16"),
    provider: str = typer.Option("cpu", help="artifact: onnxruntime provider"),
    batch: int = typer.Option(32, min=1, help="images per model call (--perturb / artifacts)"),
    workers: int = typer.Option(2, min=0, help="decode + perturb worker processes (--perturb / artifacts)"),
) -> None:
    """Evaluate a detector per generator at its fixed threshold; with --perturb, under JPEG / blur / resize.

    A run is scored by its PyTorch model; an artifact by the engine and precision given (what 'toolkit infer'
    runs). Each --perturb is one axis, each value one row (blur is applied before JPEG in a chain such as
    blur:2+jpeg:75). The oracle column re-picks the threshold on the scored images themselves: an upper
    bound, labelled as such, not a deployable figure.

    Example: toolkit eval runs/causal data/embedded/test
    Example: toolkit eval artifacts/causal data/test --precision int8 --perturb jpeg:100,75,50,30 --perturb blur:0,2,4
    """
    from toolkit.pipelines.detector import evaluate_to_files
    from toolkit.pipelines.robustness import is_artifact, robustness_to_files

    with user_errors():
        if perturb or is_artifact(target):
            from toolkit.perturb import parse_axes
            from toolkit.predict import EngineChoice

            rep, files = robustness_to_files(target, data, parse_axes(perturb), report,
                                             EngineChoice(engine, precision, provider), batch, workers)  # fmt: skip
            out.print(f"scored by {rep['scored_by']} at threshold {rep['threshold']:+.4f}")
            out.print(files["md_text"], markup=False)
            out.print(f"wrote {files['json']}, {files['md']} and {files['png']}")
            return
        rep, files = evaluate_to_files(target, data, report, cache_dir=cache_dir)
    from toolkit.evaluation import rich_table

    if "skipped" in files:
        out.print(f"[yellow]{len(rep['skipped'])} unreadable image(s) skipped: see {files['skipped']}")
    out.print(rich_table({target.name: rep}))
    out.print(f"wrote {files['json']} and {files['md']}")
