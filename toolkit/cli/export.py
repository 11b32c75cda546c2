"""`toolkit export`: a detector run -> artifacts/<name>/ (ONNX fp32 + fp16, manifest, optional TensorRT plans)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def export_command(
    run: Path = typer.Argument(..., help="run directory from 'toolkit train detector' or 'toolkit train purifier'"),
    out_dir: Path = typer.Option(Path("artifacts/detector"), "--out", help="artifact directory to write"),
    precision: list[str] = typer.Option(["fp32", "fp16"], help="precisions (repeatable): fp32, fp16, int8"),
    calib_images: Path | None = typer.Option(None, help="int8: calibration image folder"),
    eval_images: Path | None = typer.Option(None, help="int8: held-out labelled folder for the int8 gate"),
    verify_images: Path | None = typer.Option(None, help="image folder for the gates (default: seeded noise)"),
    max_abs_logit: float = typer.Option(1e-4, help="fp32 gate: max |logit - PyTorch logit|"),
    min_cosine: float = typer.Option(0.999, help="fp16 gate: min cosine of features with PyTorch"),
    min_agreement: float = typer.Option(0.995, help="fp16 gate: min decision agreement with PyTorch"),
    trt: bool = typer.Option(False, "--trt", help="also build TensorRT plans (needs TensorRT + a CUDA GPU)"),
    min_batch: int = typer.Option(1, help="TensorRT profile: smallest batch"),
    opt_batch: int = typer.Option(8, help="TensorRT profile: batch to tune for"),
    max_batch: int = typer.Option(32, help="TensorRT profile: largest batch"),
    workspace_mib: int = typer.Option(4096, help="TensorRT builder workspace limit (MiB)"),
) -> None:
    """Export a detector to ONNX (dynamic batch), gate every precision against PyTorch, write the manifest.

    Example: toolkit export runs/causal --out artifacts/causal --precision fp32 --precision fp16
    """
    from export.detector import export_detector
    from export.verify import Fp16Gate, Fp32Gate
    from toolkit.io import read_json
    from toolkit.pipelines.purifier import PURIFIER_FORMAT

    if read_json(run / "config.json").get("format", "").startswith(PURIFIER_FORMAT.split("@")[0]):  # 2nd kind
        from export.purifier import export_purifier

        with user_errors():
            m = export_purifier(run, out_dir, tuple(p for p in precision if p != "int8"), log=out.print)
        out.print(export_summary(out_dir, m))
        return

    int8 = "int8" in precision
    if int8 and not (calib_images and eval_images):
        out.print("[bold red]error:[/] --precision int8 needs --calib-images and --eval-images")
        raise typer.Exit(2)
    gates = {"fp32": Fp32Gate(max_abs_logit=max_abs_logit), "fp16": Fp16Gate(min_cosine, min_agreement)}
    float_precisions = tuple(p for p in precision if p != "int8")
    with user_errors():  # a failed gate (GateFailed, a RuntimeError) exits 2 with its numbers
        m = export_detector(run, out_dir, float_precisions, gates=gates, verify_images=verify_images, log=out.print)
    out.print(export_summary(out_dir, m))
    if int8:  # the same path as 'toolkit calibrate', default settings
        from calibration.pipeline import calibrate_artifact
        from toolkit.cli.calibrate import calibration_summary

        with user_errors():
            out.print(calibration_summary(calibrate_artifact(out_dir, calib_images, eval_images, log=out.print)))
    if trt:  # after the ONNX export, so a machine without TensorRT still keeps the gated ONNX files
        from export.tensorrt import build_artifact_plans

        with user_errors():
            plans = build_artifact_plans(out_dir, (min_batch, opt_batch, max_batch), workspace_mib, log=out.print)
        out.print("TensorRT plans: " + ", ".join(f"{p} -> {path}" for p, path in plans.items()))


def export_summary(out_dir: Path, manifest: dict) -> str:
    lines = [f"wrote {out_dir}: {', '.join(manifest['files'])} + manifest.json"]
    for precision, g in manifest["gates"].items():
        s = g["stats"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in s.items() if k in _SHOWN)
        lines.append(f"  {precision} gate {'passed' if g['passed'] else 'FAILED'}: {shown} (n={s['n']})")
    return "\n".join(lines)


_SHOWN = (
    "max_abs_logit",
    "min_cosine_feature",
    "decision_agreement",
    "max_abs_pixel",
    "min_psnr_db",
    "auc_drop_points",
)
