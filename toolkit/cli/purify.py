"""`toolkit purify`: image folder -> purified PNGs through an exported purifier, on any engine."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import err, out, user_errors


def purify_command(
    images: Path = typer.Argument(..., help="folder of images (searched recursively)"),
    artifact: Path = typer.Option(..., help="purifier artifact from 'toolkit export RUN' on a purifier run"),
    out_dir: Path = typer.Option(Path("purified"), "--out", help="output folder (same relative paths + .png)"),
    engine: str = typer.Option("onnxruntime", help="torch | onnxruntime | trt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    batch: int = typer.Option(16, min=1),
    workers: int = typer.Option(2, min=0, help="decode worker processes"),
) -> None:
    """Purify images (one UNet call each). The output mirrors the input's relative paths with '.png' appended
    to each name (pic.bmp -> pic.bmp.png), so nothing is overwritten. Resumable: existing outputs are kept.
    To purify then detect in one pass, use 'toolkit infer IMAGES --artifact DETECTOR --purify PURIFIER'.

    Example: toolkit purify suspicious/ --artifact artifacts/purifier --out purified/
    """
    from toolkit.io import display_path
    from toolkit.pipelines.purify import run_purify

    with user_errors():
        s = run_purify(
            images,
            artifact,
            out_dir,
            engine=engine,
            precision=precision,
            provider=provider,
            batch=batch,
            workers=workers,
            warn=lambda m: err.print(m, markup=False),
        )
    out.print(
        f"{s['purified_now']} purified, {s['already_done']} already done, {s['skipped']} skipped -> "
        f"{display_path(s['out'])}",
        markup=False,
    )
