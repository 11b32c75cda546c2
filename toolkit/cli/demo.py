"""`toolkit demo`: the whole chain that exists so far, offline on a CPU, on the embedded benchmark."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def demo_command(
    workdir: Path = typer.Option(Path("demo_out"), help="where data, runs and reports go"),
    clip: str = typer.Option("tiny-vit-64", help="CLIP preset (tiny by default, so it runs offline)"),
    epochs: int = typer.Option(80, min=1),
) -> None:
    """Build the embedded benchmark, train CausalCLIP and the linear probe on one generator family,
    report both on the unseen families, and export CausalCLIP to ONNX fp32 + fp16 with their parity gates.

    Example: toolkit demo --workdir demo_out
    """
    from toolkit.evaluation import rich_table
    from toolkit.pipelines.generalisation import run_generalisation

    with user_errors():
        res = run_generalisation(workdir, clip=clip, epochs=epochs)
    out.print(rich_table(res["reports"], title="CausalCLIP vs linear probe, embedded benchmark (%)"))
    out.print(f"report: {res['markdown']} and {res['json']}")

    from export.detector import export_detector
    from toolkit.cli.export import export_summary

    artifact = workdir / "artifacts" / "causal"
    with user_errors():
        val = Path(res["benchmark"]) / res["protocol"]["threshold"]  # gates on real images, not noise
        m = export_detector(workdir / "runs" / "causal", artifact, verify_images=val, log=out.print)
    out.print(export_summary(artifact, m))
