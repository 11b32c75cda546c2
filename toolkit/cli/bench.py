"""`toolkit bench`: parity + latency of engines and precisions against PyTorch fp32 -> table, JSON, Markdown, PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def bench_command(
    artifact: Path = typer.Argument(..., help="artifact directory from 'toolkit export'"),
    engine: list[str] = typer.Option(
        ["torch", "onnxruntime"], help="torch | onnxruntime | openvino | trt | auto (repeatable)"
    ),
    precision: list[str] = typer.Option(
        [], help="fp32 | fp16 | int8 | bf16 (OpenVINO) (repeatable; default: all in the artifact)"
    ),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    batch: list[int] = typer.Option([1, 8], help="batch sizes (repeatable)"),
    warmup: int | None = typer.Option(None, min=0, help="warm-up iterations per point (default: sized, 1 to 5)"),
    iterations: int | None = typer.Option(None, min=1, help="timed iterations per point (default: sized, 5 to 30)"),
    duration: float | None = typer.Option(None, help="time each point for this many seconds instead"),
    images: Path | None = typer.Option(None, help="labelled (0_real/1_fake) or plain folder for parity + AUC"),
    parity_n: int | None = typer.Option(
        None, min=2, help="images (or noise inputs) for parity (default: sized, 32 to 256)"
    ),
    e2e_images: Path | None = typer.Option(None, help="folder for end-to-end (decode+preprocess+engine) throughput"),
    e2e_n: int | None = typer.Option(None, min=1, help="images for the end-to-end figure (default: sized, 16 to 256)"),
    max_minutes: float = typer.Option(10.0, min=0.1, help="what the sizes left unset are chosen to fit"),
    workers: int = typer.Option(2, min=0, help="decode workers for end-to-end"),
    build_plans: bool = typer.Option(False, help="trt: build a missing or stale plan instead of skipping"),
    tune: bool = typer.Option(
        False, "--tune", help="time every engine kind available here; write the tuning record for --engine auto"
    ),
    no_reference: bool = typer.Option(
        False, help="run without the PyTorch reference (source run gone): parity against onnxruntime fp32"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="report directory (default: ARTIFACT/bench, with --tune ARTIFACT/bench/tune)"
    ),
) -> None:
    """Compare engines and precisions in one run: parity (max |diff|, cosine, agreement, AUC/AP/acc deltas)
    and latency (p50/p90/p99, throughput, engine-only and end-to-end), with an environment fingerprint.

    Sized by the model: the reference's cost per image is measured first, and the sizes left unset (parity
    images, iterations, warm-up, end-to-end images) are chosen to fit --max-minutes; the plan and its estimate
    are printed before the work starts, with how to shorten a run that cannot fit.

    Example: toolkit bench artifacts/causal --engine torch --engine onnxruntime --engine trt --batch 1 --batch 8
    """
    from benchmarks.harness import BenchConfig
    from toolkit.cli.workflows import bench_artifact

    cfg = BenchConfig(
        engines=tuple(engine),
        precisions=tuple(precision) or None,
        provider=provider,
        batches=tuple(batch),
        warmup=warmup,
        iterations=iterations,
        duration_s=duration,
        parity_images=str(images) if images else None,
        parity_n=parity_n,
        e2e_images=str(e2e_images) if e2e_images else None,
        e2e_n=e2e_n,
        workers=workers,
        build_plans=build_plans,
        no_reference=no_reference,
        budget_s=60 * max_minutes,
    )

    with user_errors():
        command = "toolkit " + " ".join(sys.argv[1:]) if sys.argv and "toolkit" in sys.argv[0] else None
        default_out = artifact / "bench" / "tune" if tune else artifact / "bench"  # --tune keeps the last bench
        report, files = bench_artifact(artifact, cfg, out_dir or default_out, command, log=out.print, tune=tune)
    from toolkit.cli.summaries import print_report

    print_report(report, files)
