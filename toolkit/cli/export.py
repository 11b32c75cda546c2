"""`toolkit export`: a detector run -> artifacts/<name>/ (ONNX fp32 + manifest), with the parity gate."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def export_command(
    run: Path = typer.Argument(..., help="run directory from 'toolkit train detector'"),
    out_dir: Path = typer.Option(Path("artifacts/detector"), "--out", help="artifact directory to write"),
    max_abs_logit: float = typer.Option(1e-4, help="fp32 gate: max |logit - PyTorch logit|"),
) -> None:
    """Export a detector to ONNX (fp32, dynamic batch), verify it against PyTorch, write the manifest.

    Example: toolkit export runs/causal --out artifacts/causal
    """
    from export.detector import export_detector
    from export.verify import Fp32Gate

    with user_errors():  # a failed gate (GateFailed, a RuntimeError) exits 2 with its numbers
        m = export_detector(run, out_dir, gate=Fp32Gate(max_abs_logit=max_abs_logit))
    out.print(export_summary(out_dir, m))


def export_summary(out_dir: Path, manifest: dict) -> str:
    w = manifest["gates"]["fp32"]["worst"]
    return (
        f"wrote {out_dir}: {', '.join(manifest['files'])} + manifest.json; fp32 gate passed "
        f"(max |logit diff| {w['max_abs_logit']:.2e}, decision agreement {100 * w['decision_agreement']:.1f}%)"
    )
