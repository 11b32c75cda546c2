"""`toolkit calibrate`: artifact + image folder -> <kind>.int8.onnx (explicit Q/DQ) + accuracy report and gate."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def calibrate_command(
    artifact: Path = typer.Argument(..., help="artifact directory from 'toolkit export'"),
    images: Path = typer.Option(..., help="calibration image folder (searched recursively)"),
    eval_images: Path = typer.Option(..., help="held-out labelled folder (0_real/1_fake) for the report and gate"),
    method: str = typer.Option("minmax", help="minmax | entropy | percentile"),
    percentile: float = typer.Option(99.999, help="percentile method: the percentile kept"),
    calib_n: int = typer.Option(256, min=1, help="calibration images used (a seeded sample)"),
    eval_n: int = typer.Option(1000, min=2, help="evaluation images used (a seeded sample)"),
    calib_batch: int | None = typer.Option(
        None, min=1, help="calibration batch (default: the largest of 16, 8, 4, 2, 1 whose activations fit 2 GiB)"
    ),
    exclude: list[str] = typer.Option([], help="node names to keep in float (repeatable)"),
    quantize_patch_embedding: bool = typer.Option(False, help="also quantize the patch embedding"),
    quantize_head: bool = typer.Option(False, help="also quantize the post-LayerNorm head"),
    max_auc_drop: float = typer.Option(0.5, help="gate: max AUC drop against fp32, in points"),
    reduce_range: bool | None = typer.Option(
        None, "--reduce-range/--full-range", help="7-bit weights (default: chosen from the CPU; AVX2 without VNNI)"
    ),
    workers: int = typer.Option(2, min=0, help="decode worker processes"),
    no_vnni_n: int = typer.Option(
        64, min=0, help="evaluation images the no-VNNI gate runs on (emulated; ~14 s per ViT-B/16 image); 0 = skip it"
    ),
    no_vnni_minutes: float = typer.Option(
        10.0, min=0.1, help="the no-VNNI emulation stops after this long and judges the images it emulated"
    ),
) -> None:
    """Quantize an artifact to INT8 (static, QDQ, symmetric, per-channel weights) and gate it on held-out images.

    Calibration and evaluation images must be disjoint (checked by content). A failed gate exits 2 with
    the numbers, removes the int8 file and leaves the manifest as it was. The gate also judges the file for
    x86 CPUs without VNNI (onnxruntime's int8 GEMM saturates int16 pair sums there), by an exact emulation
    on --no-vnni-n of the evaluation images; a file that fails it is refused on such CPUs.

    Memory depends on the batch, not on --calib-n: statistics are merged batch by batch. Before anything is
    written, the peak is estimated from the graph's activation sizes and the run is refused (exit 1) when it
    would not fit the memory available, with the batch that would.

    Example: toolkit calibrate artifacts/causal --images data/calib --eval-images data/test --method entropy
    """
    from calibration.pipeline import Int8Gate, calibrate_artifact
    from calibration.quantize import QuantConfig
    from toolkit.cli.summaries import calibration_summary

    with user_errors():
        cfg = QuantConfig(
            method=method,
            percentile=percentile,
            per_channel=True,
            keep_patch_embedding=not quantize_patch_embedding,
            keep_head=not quantize_head,
            exclude_nodes=list(exclude),
            reduce_range=reduce_range,
        )
        r = calibrate_artifact(
            artifact,
            images,
            eval_images,
            cfg,
            Int8Gate(max_auc_drop_points=max_auc_drop),
            calib_n=calib_n,
            eval_n=eval_n,
            batch=calib_batch,
            workers=workers,
            log=out.print,
            no_vnni_n=no_vnni_n,
            no_vnni_minutes=no_vnni_minutes,
        )
    out.print(calibration_summary(r))
