"""`toolkit debug`: a reduced precision against fp32, layer by layer -> which layer breaks, JSON + Markdown + PNG."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def debug_command(
    artifact: Path = typer.Argument(..., help="artifact directory from 'toolkit export'"),
    precision: str = typer.Option(..., help="fp16 | int8 | bf16: the precision to compare with fp32"),
    engine: str = typer.Option("onnxruntime", help="onnxruntime | openvino (bf16 is OpenVINO's)"),
    images: Path | None = typer.Option(None, help="folder of images to run (default: seeded noise)"),
    n: int = typer.Option(16, min=1, help="images (or noise inputs) to run"),
    cpu: str = typer.Option(
        "native",
        help="int8 in onnxruntime as x86 CPUs compute it: vnni (exact sums) | no-vnni (saturating int16 pair sums, "
        "emulated) | native (this CPU's own: no-vnni on x86 without VNNI)",
    ),
    min_sqnr_db: float | None = typer.Option(None, help="a layer breaks below this SQNR (fp16 40, bf16 25, int8 15)"),
    min_cosine: float = typer.Option(0.99, help="... or below this cosine with fp32 on some image"),
    out_dir: Path | None = typer.Option(None, "--out", help="report directory (default: ARTIFACT/bench/debug)"),
) -> None:
    """Run the reduced precision and fp32 on the same inputs with every layer's output exposed, match the layers
    across the two graphs (through Cast and Q/DQ, by op type and position), and report per layer in graph order:
    cosine, SQNR, max |diff| (and with --cpu no-vnni the share of GEMM sums int16 saturation changed); name the
    first layer below the thresholds and the ten that add the most error.

    Example: toolkit debug artifacts/causal --precision int8 --images data/embedded/test --cpu no-vnni
    """
    from toolkit.cli.workflows import debug_precision

    with user_errors():
        rep, files = debug_precision(artifact, precision, engine, images, n, cpu, out_dir, min_sqnr_db, min_cosine,
                                     log=out.print)  # fmt: skip
    f = rep["first_failing"]
    if f:
        out.print(f"first layer below the thresholds: [bold]{f['node']}[/] ({f['op']}, depth {f['depth']}): "
                  f"SQNR {f['sqnr_db']:.1f} dB, min cosine {f['cosine_min']:.4f}")  # fmt: skip
    else:
        out.print("no layer below the thresholds")
    top = ", ".join(f"{r['node']} ({r['op']})" for r in rep["top_added_error"][:5])
    out.print(f"adding the most error: {top}")
    out.print(f"outputs: {rep['outputs']}")
    out.print("report: " + ", ".join(str(p) for p in files))
