"""`toolkit export`: a run (any model kind) -> artifacts/<name>/ (ONNX fp32 + fp16, manifest, [int8], [TensorRT])."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import GATE_HELP, out, parse_gate_overrides, user_errors


def export_command(
    run: Path = typer.Argument(..., help="run directory from 'toolkit train detector' or 'toolkit train purifier'"),
    out_dir: Path = typer.Option(Path("artifacts/detector"), "--out", help="artifact directory to write"),
    precision: list[str] = typer.Option(
        ["fp32", "fp16"], help="precisions (repeatable): fp32, fp16, int8, bf16 (OpenVINO)"
    ),
    calib_images: Path | None = typer.Option(None, help="int8: calibration image folder"),
    eval_images: Path | None = typer.Option(None, help="int8 / bf16: held-out labelled folder for their gates"),
    verify_images: Path | None = typer.Option(
        None,
        help="image folder for the gates; a labelled one (0_real/1_fake) also gates fp16 on AUC and accuracy "
        "at its own operating point (default: seeded noise)",
    ),
    gate: list[str] = typer.Option([], help=GATE_HELP),
    repair: bool = typer.Option(
        False,
        help="when the fp16 gate fails, keep the fewest layers in fp32 that make it pass (ranked by toolkit debug)",
    ),
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

    with user_errors():
        gates = parse_gate_overrides(gate)
    opts = ExportOptions(
        precisions=tuple(precision),
        gate_overrides=gates,
        repair=repair,
        verify_images=verify_images,
        calib_images=calib_images,
        eval_images=eval_images,
        trt_batches=(min_batch, opt_batch, max_batch) if trt else None,
        workspace_mib=workspace_mib,
    )
    with user_errors():
        export_all(run, out_dir, opts, log=out.print)
