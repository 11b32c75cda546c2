"""`toolkit export`: a run (any model kind) -> artifacts/<name>/ (ONNX fp32 + fp16, manifest, [int8], [TensorRT])."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors

# flag -> (precision, gate bound); the run's kind refuses a bound it does not have
GATE_FLAGS = {
    "--max-abs-logit": ("fp32", "max_abs_logit"),
    "--min-cosine": ("fp16", "min_cosine_feature"),
    "--min-agreement": ("fp16", "min_decision_agreement"),
    "--max-abs-pixel": ("fp32", "max_abs_pixel"),
    "--min-psnr-db": ("fp16", "min_psnr_db"),
}


def export_command(
    run: Path = typer.Argument(..., help="run directory from 'toolkit train detector' or 'toolkit train purifier'"),
    out_dir: Path = typer.Option(Path("artifacts/detector"), "--out", help="artifact directory to write"),
    precision: list[str] = typer.Option(
        ["fp32", "fp16"], help="precisions (repeatable): fp32, fp16, int8, bf16 (OpenVINO)"
    ),
    calib_images: Path | None = typer.Option(None, help="int8: calibration image folder"),
    eval_images: Path | None = typer.Option(None, help="int8 / bf16: held-out labelled folder for their gates"),
    verify_images: Path | None = typer.Option(None, help="image folder for the gates (default: seeded noise)"),
    max_abs_logit: float | None = typer.Option(None, help="detector fp32 gate: max |logit - PyTorch| (1e-4)"),
    min_cosine: float | None = typer.Option(None, help="detector fp16 gate: min feature cosine (0.999)"),
    min_agreement: float | None = typer.Option(None, help="detector fp16 gate: min decision agreement (0.995)"),
    max_abs_pixel: float | None = typer.Option(None, help="purifier fp32 gate: max |pixel - PyTorch| (1e-4)"),
    min_psnr_db: float | None = typer.Option(None, help="purifier fp16 gate: min PSNR against PyTorch (40)"),
    trt: bool = typer.Option(False, "--trt", help="also build TensorRT plans (needs TensorRT + a CUDA GPU)"),
    min_batch: int = typer.Option(1, help="TensorRT profile: smallest batch"),
    opt_batch: int = typer.Option(8, help="TensorRT profile: batch to tune for"),
    max_batch: int = typer.Option(32, help="TensorRT profile: largest batch"),
    workspace_mib: int = typer.Option(4096, help="TensorRT builder workspace limit (MiB)"),
) -> None:
    """Export a run to ONNX (dynamic batch), gate every precision against PyTorch, write the artifact.

    The run's model kind decides what applies: a flag it has no use for (int8 or a detector gate on a
    purifier) is refused with the reason. An existing artifact at --out is replaced only when every gate passes.

    Example: toolkit export runs/causal --out artifacts/causal --precision fp32 --precision fp16
    """
    from toolkit.cli.workflows import ExportOptions, export_all

    values = (max_abs_logit, min_cosine, min_agreement, max_abs_pixel, min_psnr_db)
    gates = {GATE_FLAGS[f]: v for f, v in zip(GATE_FLAGS, values, strict=True) if v is not None}
    opts = ExportOptions(
        precisions=tuple(precision),
        gate_overrides=gates,
        verify_images=verify_images,
        calib_images=calib_images,
        eval_images=eval_images,
        trt_batches=(min_batch, opt_batch, max_batch) if trt else None,
        workspace_mib=workspace_mib,
    )
    with user_errors():
        export_all(run, out_dir, opts, log=out.print)
