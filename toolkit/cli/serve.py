"""`toolkit serve`: serve an artifact on a Triton Inference Server (PyTriton); `toolkit triton-repo`: write a
native Triton model repository for NVIDIA's Triton container."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import out, user_errors


def serve_command(
    artifact: Path = typer.Argument(..., help="detector artifact directory from 'toolkit export'"),
    purify: Path | None = typer.Option(None, help="purifier artifact run before the detector in the same request"),
    engine: str = typer.Option("onnxruntime", help="torch | onnxruntime | openvino | trt | auto (from bench --tune)"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 | bf16 (what the artifact holds)"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 for every interface)"),
    http_port: int = typer.Option(8000, min=1, max=65535, help="HTTP/REST port (KServe v2 protocol)"),
    grpc_port: int = typer.Option(8001, min=1, max=65535, help="gRPC port"),
    metrics_port: int = typer.Option(8002, min=1, max=65535, help="Prometheus metrics port"),
    max_batch: int = typer.Option(64, min=1, help="largest batch the dynamic batcher builds"),
    max_queue_delay_us: int = typer.Option(2000, min=0, help="how long a request may wait to fill a batch (µs)"),
    instances: int = typer.Option(1, min=1, help="model instances, each with its own engines"),
    threads: int | None = typer.Option(None, min=1, help="engine threads per instance (default: cores / instances)"),
    drain_s: int = typer.Option(30, min=0, help="on SIGTERM: seconds in-flight requests may take to finish"),
    log_file: Path | None = typer.Option(None, help="tritonserver's own log (default: a new private temp directory)"),
    config: str = typer.Option(
        "default",
        help="default | auto: engine, precision, instances, max batch, queue "
        "delay and threads from 'toolkit loadtest --tune' on this machine",
    ),
    decode_threads: int | None = typer.Option(
        None, min=1, help="threads decoding one batch's images, per instance (default: cores)"
    ),
    stage: str = typer.Option(
        "predict",
        help="predict | decode | none: diagnostic servers that stop after decoding, or before it, and answer NaN "
        "scores (to measure a request's fixed cost with 'toolkit loadtest')",
    ),
) -> None:
    """Serve a detector (optionally behind a purifier) on Triton: models `detect` (encoded image bytes in)
    and `detect_tensor` (preprocessed float32 batches in), both running the same prediction path as
    'toolkit infer'. Health: GET /v2/health/ready. SIGTERM drains in-flight requests, then exits 0.

    Example: toolkit serve artifacts/causal --engine onnxruntime --precision int8 --grpc-port 8001
    Then:    toolkit infer photos/ --server grpc://127.0.0.1:8001 --out preds.csv
    """
    from toolkit.serving.server import ServeConfig, serve

    cfg = ServeConfig(
        engine=engine,
        precision=precision,
        provider=provider,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        threads=threads,
        drain_s=drain_s,
        log_file=str(log_file) if log_file else None,
        tuned=config == "auto",
        decode_threads=decode_threads,
        stage=stage,
    )
    with user_errors():
        if config not in ("default", "auto"):
            raise ValueError(f"--config takes default or auto, got {config!r}")
        served = serve(artifact, purify, cfg, log=lambda m: out.print(m, markup=False, highlight=False))
    out.print(f"stopped on {served['stopped_by']}: in-flight requests finished", markup=False)


def triton_repo_command(
    artifact: Path = typer.Argument(..., help="detector artifact directory from 'toolkit export'"),
    out_dir: Path = typer.Option(..., "--out", help="model repository directory to write (replaced as a whole)"),
    purify: Path | None = typer.Option(None, help="purifier artifact: adds it and a purifier -> detector ensemble"),
    max_batch: int = typer.Option(64, min=1, help="max_batch_size of every model"),
    max_queue_delay_us: int = typer.Option(2000, min=0, help="dynamic batching queue delay (µs)"),
    instances: int = typer.Option(1, min=1, help="instance_group count per model"),
    gpu: bool = typer.Option(False, help="instance_group kind KIND_GPU (default KIND_CPU)"),
    config: str = typer.Option(
        "default",
        help="default | auto: max batch, queue delay and instances from 'toolkit loadtest --tune' on this machine",
    ),
) -> None:
    """Write a standard Triton model repository for the native backends: one onnxruntime_onnx model per
    precision file, tensorrt_plan models where TensorRT plans were built, and with --purify an ensemble
    purifier -> normalise -> detector. Run it in NVIDIA's Triton container (the native backends are not
    on PyPI); see the README's "Serving" section.

    Example: toolkit triton-repo artifacts/causal --purify artifacts/purifier --out model_repository
    """
    from toolkit.serving.repository import RepositoryConfig, write_model_repository

    cfg = RepositoryConfig(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances, gpu=gpu,
                           tuned=config == "auto")  # fmt: skip
    with user_errors():
        if config not in ("default", "auto"):
            raise ValueError(f"--config takes default or auto, got {config!r}")
        models = write_model_repository(artifact, out_dir, purify, cfg)
    out.print(f"wrote {len(models)} models to {out_dir}: {', '.join(models)}", markup=False)
