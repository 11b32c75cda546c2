"""`toolkit loadtest`: throughput and latency of a served `detect` model per concurrency x images per request."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def _ints(text: str, name: str, least: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < least:
        raise ValueError(f"{name} takes comma-separated whole numbers >= {least}, got {text!r}")
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
    decode_threads: int | None = typer.Option(None, min=1, help="artifact target: threads decoding a batch"),
    stage: str = typer.Option(
        "predict", help="artifact target: predict | decode | none (serve a diagnostic stage: a request's fixed cost)"
    ),
    out_dir: Path = typer.Option(Path("loadtest"), "--out", help="report directory (loadtest.json, .md, .png)"),
    tune: bool = typer.Option(False, help="search serving configs of an artifact under --p99-ms (one workload)"),
    p99_ms: float | None = typer.Option(None, min=0.001, help="--tune: the p99 latency budget (ms)"),
    tune_instances: str = typer.Option("1,2", help="--tune: instance counts to try"),
    tune_max_batch: str = typer.Option("8,64", help="--tune: max batch sizes to try"),
    tune_queue_delay_us: str = typer.Option("0,2000", help="--tune: dynamic batching delays to try (µs)"),
    tune_threads: str = typer.Option(
        "auto", help="--tune: engine threads per instance to try (auto: cores / instances)"
    ),
    tune_decode_threads: str = typer.Option(
        "auto", help="--tune: threads decoding a batch per instance to try (auto: cores)"
    ),
    tune_repeats: int = typer.Option(
        2, min=1, help="--tune: rounds over the grid (a point's p99: its worst round; images/s: the mean)"
    ),
) -> None:
    """Sweep concurrency x images per request against a served `detect` model, as perf_analyzer does: per
    cell, images/s, requests/s, p50/p90/p95/p99 latency, errors, and the server's queue and compute time
    from Triton's statistics. An artifact is served on 127.0.0.1 for the duration. Targets outside loopback
    need --allow-remote.

    With --tune (an artifact target, one --concurrency and one --batch: the workload you expect), every
    config of the grid instances x max batch x queue delay x threads x decode threads, and the default, is
    served and measured; the one with the most images/s whose p99 is within --p99-ms is recorded in the
    artifact's tuning/ for this machine, and 'toolkit serve --config auto' / 'toolkit triton-repo --config auto' use it.

    Example: toolkit loadtest artifacts/causal --concurrency 1,4,16 --batch 1,8 --requests 500 --out loadtest
    Or:      toolkit loadtest grpc://127.0.0.1:8001 --images photos/ --duration 30
    Or:      toolkit loadtest artifacts/causal --tune --p99-ms 50 --concurrency 16 --batch 1 --requests 500
    """
    from toolkit.serving.loadtest import LoadConfig, ServeOptions, run_and_report
    from toolkit.serving.sizing import SearchSpace, describe, tune_and_report

    log = lambda m: out.print(m, markup=False, highlight=False)  # noqa: E731
    with user_errors():
        cfg = LoadConfig(_ints(concurrency, "--concurrency"), _ints(batch, "--batch"), requests, duration, warmup,
                         timeout, allow_remote=allow_remote)  # fmt: skip
        serve = ServeOptions(engine, precision, instances, max_batch, max_queue_delay_us, threads,
                             decode_threads=decode_threads, stage=stage)  # fmt: skip
        command = "toolkit " + " ".join(sys.argv[1:])
        if tune:
            if p99_ms is None:
                raise ValueError("--tune needs --p99-ms, the p99 latency budget in ms")
            space = SearchSpace(
                _ints(tune_instances, "--tune-instances"),
                _ints(tune_max_batch, "--tune-max-batch"),
                _ints(tune_queue_delay_us, "--tune-queue-delay-us", 0),
                _threads(tune_threads, "--tune-threads"),
                _threads(tune_decode_threads, "--tune-decode-threads"),
            )
            args = (Path(target), p99_ms, cfg, space, serve, out_dir, images, pool, command)
            record, files = tune_and_report(*args, log=log, repeats=tune_repeats)
            chosen = record["chosen"]
            log(f"chosen: {describe(chosen['config'])}" if chosen else "no config met the budget: nothing chosen")
        else:
            _, files = run_and_report(target, cfg, out_dir, images, pool, serve, protocol, command, log=log)
    out.print("report: " + ", ".join(str(p) for p in files.values()), markup=False)


def _threads(text: str, option: str) -> tuple[int | None, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{option} takes auto or comma-separated whole numbers, got {text!r}")
    return tuple(None if p == "auto" else _ints(p, option)[0] for p in parts)
