"""`toolkit loadtest`: throughput and latency of a served `detect` model per concurrency x images per request."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} takes comma-separated whole numbers >= 1, got {text!r}")
    return values


def loadtest_command(
    target: str = typer.Argument(..., help="grpc://HOST:PORT, http://HOST:PORT, or an artifact to serve on loopback"),
    images: Path | None = typer.Option(None, help="folder (or file list) of images to send (default: synthetic JPEGs)"),
    pool: int = typer.Option(256, min=1, help="distinct images read and sent in turn"),
    concurrency: str = typer.Option("1,4,16,64", help="requests in flight, comma-separated"),
    batch: str = typer.Option("1,8", help="images per request, comma-separated"),
    requests: int = typer.Option(1000, min=1, help="requests per cell, at most"),
    duration: float | None = typer.Option(None, min=0.1, help="seconds per cell, at most"),
    warmup: int = typer.Option(16, min=0, help="requests per cell sent before it is measured"),
    timeout: float = typer.Option(120.0, min=0.1, help="a request's deadline (s); past it the request failed"),
    protocol: str = typer.Option("grpc", help="grpc | http: how an artifact target is reached"),
    allow_remote: bool = typer.Option(False, help="allow a target outside loopback"),
    engine: str = typer.Option("onnxruntime", help="artifact target: the engine it is served with"),
    precision: str = typer.Option("fp32", help="artifact target: fp32 | fp16 | int8 | bf16"),
    instances: int = typer.Option(1, min=1, help="artifact target: model instances"),
    max_batch: int = typer.Option(64, min=1, help="artifact target: largest batch the dynamic batcher builds"),
    max_queue_delay_us: int = typer.Option(2000, min=0, help="artifact target: dynamic batching delay (µs)"),
    threads: int | None = typer.Option(None, min=1, help="artifact target: engine threads per instance"),
    out_dir: Path = typer.Option(Path("loadtest"), "--out", help="report directory (loadtest.json, .md, .png)"),
) -> None:
    """Sweep concurrency x images per request against a served `detect` model, as perf_analyzer does: per
    cell, images/s, requests/s, p50/p90/p95/p99 latency, errors, and the server's queue and compute time
    from Triton's statistics. An artifact is served on 127.0.0.1 for the duration. Targets outside loopback
    need --allow-remote.

    Example: toolkit loadtest artifacts/causal --concurrency 1,4,16 --batch 1,8 --requests 500 --out loadtest
    Or:      toolkit loadtest grpc://127.0.0.1:8001 --images photos/ --duration 30
    """
    from toolkit.serving.loadtest import LoadConfig, ServeOptions, run_and_report

    with user_errors():
        cfg = LoadConfig(_ints(concurrency, "--concurrency"), _ints(batch, "--batch"), requests, duration, warmup,
                         timeout, allow_remote=allow_remote)  # fmt: skip
        serve = ServeOptions(engine, precision, instances, max_batch, max_queue_delay_us, threads)
        command = "toolkit " + " ".join(sys.argv[1:])
        _, files = run_and_report(target, cfg, out_dir, images, pool, serve, protocol, command,
                                  log=lambda m: out.print(m, markup=False, highlight=False))  # fmt: skip
    out.print("report: " + ", ".join(str(p) for p in files.values()), markup=False)
