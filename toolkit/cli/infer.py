"""`toolkit infer`: images -> predictions (CSV / JSON lines / Parquet parts), locally or on Ray; resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import err, out, user_errors


def infer_command(
    images: Path = typer.Argument(..., help="folder of images (searched recursively), or a .txt / .parquet file list"),
    artifact: Path | None = typer.Option(None, help="artifact directory from 'toolkit export' (not with --server)"),
    engine: str = typer.Option("onnxruntime", help="torch | onnxruntime | openvino | trt | auto (from bench --tune)"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 | bf16 (OpenVINO; what the artifact holds)"),
    provider: str = typer.Option("cpu", help="onnxruntime provider: cpu | cuda | tensorrt"),
    out_file: Path = typer.Option(
        Path("preds.csv"), "--out", help="predictions file (.csv, .jsonl) or, with --ray, a directory of Parquet parts"
    ),
    batch: int = typer.Option(32, min=1, help="images per engine call"),
    workers: int = typer.Option(2, min=0, help="decode worker processes (0: decode in this process)"),
    overwrite: bool = typer.Option(False, help="start again instead of resuming an existing --out"),
    purify: Path | None = typer.Option(None, help="purifier artifact run before the detector (same engine)"),
    ray: str | None = typer.Option(None, help="run on Ray Data: local (a cluster here), auto, or ray://HOST:PORT"),
    actors: int = typer.Option(2, min=1, help="--ray: actor pool size (one engine each)"),
    cpus_per_actor: float = typer.Option(1.0, min=0.0, help="--ray: CPUs reserved per actor"),
    gpus_per_actor: float = typer.Option(0.0, min=0.0, help="--ray: GPUs per actor (with trt or onnxruntime-cuda)"),
    server: str | None = typer.Option(None, help="send the work to 'toolkit serve' at grpc://HOST:PORT"),
    concurrency: int = typer.Option(16, min=1, help="--server: requests in flight"),
    retry_for: float = typer.Option(30.0, min=0.0, help="--server: seconds to retry a server that went away"),
) -> None:
    """Predict p(generated) for every image under a folder.

    Interrupted (Ctrl-C, a killed process)? Run the same command again: it resumes, with exactly one
    row per readable file. Unreadable files are listed with the reason in <out>.skipped.csv. Rows are keyed
    by the path relative to the folder; any file name is written losslessly (.jsonl escapes bytes that are
    not UTF-8, .csv keeps them as they are). A second run on the same --out is refused while one runs.

    With --ray, the same contract on a Ray cluster: actors read the files (the driver ships paths), one
    engine per actor; a killed actor is restarted and its batch retried. A file list as SOURCE spares the
    driver walking a huge folder; --out DIR (no suffix) writes Parquet parts for very large runs.

    With --server, the same contract with the work done by 'toolkit serve' (its artifact, engine and precision;
    --batch images per request): this process only reads the files. If the server goes away, requests are
    retried for --retry-for seconds, then the run stops; rerun to resume.

    Example: toolkit infer photos/ --artifact artifacts/causal --engine onnxruntime --out preds.csv
    Example: toolkit infer files.txt --artifact artifacts/causal --ray auto --actors 8 --out preds/
    Example: toolkit infer photos/ --server grpc://127.0.0.1:8001 --concurrency 16 --out preds.csv
    """
    from toolkit.io import display_path
    from toolkit.pipelines.infer import InferConfig, run_inference

    cfg = InferConfig(
        engine=engine,
        precision=precision,
        provider=provider,
        batch=batch,
        workers=workers,
        overwrite=overwrite,
        purify=str(purify) if purify else None,
    )
    try:
        with user_errors():
            warn = lambda m: err.print(m, markup=False)  # noqa: E731
            if server:
                from toolkit.pipelines.server_infer import ClientConfig, run_server_inference

                _refuse_local_options(artifact, engine, precision, provider, purify, ray)
                c = ClientConfig(url=server, concurrency=concurrency, retry_s=retry_for)
                s = run_server_inference(images, out_file, batch, c, overwrite, log=out.print, warn=warn)
            elif artifact is None:
                raise ValueError("infer needs --artifact (or --server grpc://HOST:PORT to use 'toolkit serve')")
            elif ray:
                from toolkit.pipelines.ray_infer import RayConfig, run_ray_inference

                rc = RayConfig(address=ray, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)
                s = run_ray_inference(images, artifact, out_file, cfg, rc, log=out.print, warn=warn)
            else:
                s = run_inference(images, artifact, out_file, cfg, log=out.print, warn=warn)
    except KeyboardInterrupt:
        out.print(
            f"\ninterrupted: the rows written so far are in {display_path(out_file)}; run the same command to resume"
        )
        raise typer.Exit(130) from None
    where, opening = f"{s['engine']} {s['precision']}", "opening the engine"
    if server:
        where, opening = f"the server at {server}", "reaching it"
    reasons = ", ".join(f"{k}: {v}" for k, v in s["skipped_reasons_now"].items()) or "none"
    out.print(
        f"{s['predicted_now']} predicted ({s['generated_now']} generated), {s['skipped_now']} skipped ({reasons}), "
        f"{s['already_done']} already done, {s['other_files_ignored']} non-image files ignored; "
        f"{s['images_per_s'] or 0:.1f} images/s on {where} "
        f"({s['images_per_s_after_open'] or 0:.1f} after {opening} in {s['engine_open_s']:.1f} s)\n"
        f"predictions: {display_path(s['predictions'])} ({s['rows_total']} rows); "
        f"skipped: {display_path(s['skipped'])}",
        markup=False,
    )


def _refuse_local_options(artifact, engine, precision, provider, purify, ray) -> None:
    """With --server, the server decides artifact, engine and precision: a local choice would be silently ignored."""
    given = [
        name
        for name, value, default in (
            ("--artifact", artifact, None),
            ("--engine", engine, "onnxruntime"),
            ("--precision", precision, "fp32"),
            ("--provider", provider, "cpu"),
            ("--purify", purify, None),
            ("--ray", ray, None),
        )
        if value != default
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)} cannot be used with --server: the server's own settings apply ('toolkit serve')"
        )
