"""`toolkit infer`: image folder -> predictions (CSV / JSON lines); batched, resumable, bad files listed not fatal."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import err, out, user_errors


def infer_command(
    images: Path = typer.Argument(..., help="folder of images (searched recursively)"),
    artifact: Path = typer.Option(..., help="artifact directory from 'toolkit export'"),
    engine: str = typer.Option("onnxruntime", help="torch | onnxruntime | trt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (what the artifact holds)"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    out_file: Path = typer.Option(Path("preds.csv"), "--out", help="predictions file: .csv or .jsonl"),
    batch: int = typer.Option(32, min=1, help="images per engine call"),
    workers: int = typer.Option(2, min=0, help="decode worker processes (0: decode in this process)"),
    overwrite: bool = typer.Option(False, help="start again instead of resuming an existing --out"),
    purify: Path | None = typer.Option(None, help="purifier artifact run before the detector (same engine)"),
) -> None:
    """Predict p(generated) for every image under a folder.

    Interrupted (Ctrl-C, a killed process)? Run the same command again: it resumes, with exactly one
    row per readable file. Unreadable files are listed with the reason in <out>.skipped.csv. Rows are keyed
    by the path relative to the folder; any file name is written losslessly (.jsonl escapes bytes that are
    not UTF-8, .csv keeps them as they are). A second run on the same --out is refused while one runs.

    Example: toolkit infer photos/ --artifact artifacts/causal --engine onnxruntime --out preds.csv
    """
    from toolkit.io import display_path
    from toolkit.pipelines.infer import InferConfig, run_inference

    cfg = InferConfig(
        engine=engine,
        precision=precision,
        provider=provider,
        batch=batch,
        workers=workers,
        overwrite=overwrite,
        purify=str(purify) if purify else None,
    )
    try:
        with user_errors():
            s = run_inference(images, artifact, out_file, cfg, log=out.print, warn=lambda m: err.print(m, markup=False))
    except KeyboardInterrupt:
        out.print(
            f"\ninterrupted: the rows written so far are in {display_path(out_file)}; run the same command to resume"
        )
        raise typer.Exit(130) from None
    reasons = ", ".join(f"{k}: {v}" for k, v in s["skipped_reasons_now"].items()) or "none"
    out.print(
        f"{s['predicted_now']} predicted ({s['generated_now']} generated), {s['skipped_now']} skipped ({reasons}), "
        f"{s['already_done']} already done, {s['other_files_ignored']} non-image files ignored; "
        f"{s['images_per_s']:.1f} images/s on {s['engine']} {s['precision']} "
        f"({s['images_per_s_after_open'] or 0:.1f} after opening the engine in {s['engine_open_s']:.1f} s)\n"
        f"predictions: {display_path(s['predictions'])} ({s['rows_total']} rows); "
        f"skipped: {display_path(s['skipped'])}",
        markup=False,
    )
