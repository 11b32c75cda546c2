"""`toolkit calibrate`: artifact + image folder -> <kind>.int8.onnx (explicit Q/DQ) + accuracy report and gate."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import GATE_HELP, out, parse_gate_overrides, user_errors


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
    gate: list[str] = typer.Option([], help=GATE_HELP),
    repair: bool = typer.Option(
        False,
        help="when the gate fails (here or for CPUs without VNNI), keep the fewest layers in float or at 7-bit "
        "weights that make it pass, ranked by their error (toolkit debug); the kept layers go into the manifest",
    ),
    reduce_range: bool | None = typer.Option(
        None, "--reduce-range/--full-range", help="7-bit weights (default: chosen from the CPU; AVX2 without VNNI)"
    ),
    workers: int = typer.Option(2, min=0, help="decode worker processes"),
    no_vnni_n: int = typer.Option(
        1000,
        min=0,
        help="evaluation images the no-VNNI gate runs on (emulated: tiny models in seconds, ~2 s per "
        "ViT-B/16 image on 2 cores, so --no-vnni-minutes may end it first there); 0 = skip it",
    ),
    no_vnni_minutes: float = typer.Option(
        10.0, min=0.1, help="the no-VNNI emulation stops after this long and judges the images it emulated"
    ),
) -> None:
    """Quantize an artifact to INT8 (static, QDQ, symmetric, per-channel weights) and gate it on held-out images.

    Calibration and evaluation images must be disjoint (checked by content). int8 is judged by the policy of
    every reduced precision (AUC drop, accuracy drop, decision agreement at its own operating point, feature
    cosine; see --gate). A failed gate exits 2 with the numbers, removes the int8 file and leaves the manifest as
    it was; --repair first keeps the fewest layers in float (or at 7-bit weights) that make it pass. The gate
    also judges the file for
    x86 CPUs without VNNI (onnxruntime's int8 GEMM saturates int16 pair sums there), by an exact emulation
    on --no-vnni-n of the evaluation images; a file that fails it is refused on such CPUs.

    Memory depends on the batch, not on --calib-n: statistics are merged batch by batch. Before anything is
    written, the peak is estimated from the graph's activation sizes and the run is refused (exit 1) when it
    would not fit the memory available, with the batch that would.

    Example: toolkit calibrate artifacts/causal --images data/calib --eval-images data/test --repair
    """
    from calibration.pipeline import calibrate_artifact
    from calibration.quantize import QuantConfig
    from toolkit import kinds
    from toolkit.artifact import Artifact
    from toolkit.cli.summaries import calibration_summary

    with user_errors():
        art = Artifact.open(artifact)
        int8_gate = kinds.for_artifact(art).gates(parse_gate_overrides(gate)).get("int8")
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
            art,
            images,
            eval_images,
            cfg,
            int8_gate,
            calib_n=calib_n,
            eval_n=eval_n,
            batch=calib_batch,
            workers=workers,
            log=out.print,
            no_vnni_n=no_vnni_n,
            no_vnni_minutes=no_vnni_minutes,
            repair=repair,
        )
    out.print(calibration_summary(r))
