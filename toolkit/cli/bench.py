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
    precision: list[str] = typer.Option([], help="fp32 | fp16 | int8 (repeatable; default: all in the artifact)"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    batch: list[int] = typer.Option([1, 8], help="batch sizes (repeatable)"),
    warmup: int = typer.Option(5, min=0, help="warm-up iterations per point (discarded)"),
    iterations: int = typer.Option(30, min=1, help="timed iterations per point"),
    duration: float | None = typer.Option(None, help="time each point for this many seconds instead"),
    images: Path | None = typer.Option(None, help="labelled (0_real/1_fake) or plain folder for parity + AUC"),
    parity_n: int = typer.Option(256, min=2, help="images (or noise inputs) for parity"),
    e2e_images: Path | None = typer.Option(None, help="folder for end-to-end (decode+preprocess+engine) throughput"),
    e2e_n: int = typer.Option(256, min=1, help="images for the end-to-end figure"),
    workers: int = typer.Option(2, min=0, help="decode workers for end-to-end"),
    build_plans: bool = typer.Option(False, help="trt: build a missing or stale plan instead of skipping"),
    tune: bool = typer.Option(
        False, "--tune", help="time every engine kind available here; write the tuning record for --engine auto"
    ),
    no_reference: bool = typer.Option(
        False, help="run without the PyTorch reference (source run gone): parity against onnxruntime fp32"
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="report directory (default: ARTIFACT/bench)"),
) -> None:
    """Compare engines and precisions in one run: parity (max |diff|, cosine, agreement, AUC/AP/acc deltas)
    and latency (p50/p90/p99, throughput, engine-only and end-to-end), with an environment fingerprint.

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
    )

    with user_errors():
        command = "toolkit " + " ".join(sys.argv[1:]) if sys.argv and "toolkit" in sys.argv[0] else None
        report, files = bench_artifact(artifact, cfg, out_dir or artifact / "bench", command, log=out.print, tune=tune)
    from toolkit.cli.summaries import print_report

    print_report(report, files)
