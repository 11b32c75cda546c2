"""Load test of `toolkit serve` on loopback, next to in-process `toolkit infer` measured in the same run.

Per artifact: first in-process `infer` on a folder of the run's JPEGs (same engine and precision, default batch
and decode workers; its images/s after the engine opened is the reference); then `toolkit loadtest` of the
artifact (`toolkit.serving.loadtest`: `toolkit serve` on 127.0.0.1 at free ports, and for each concurrency x
images-per-request cell a bounded closed loop, a fixed request count and a time limit, of the same JPEGs to the
`detect` model over gRPC, one tritonclient per client thread). Reported per cell: requests, errors (failed
requests + items with an error), p50 / p90 / p99 request latency, images/s, and images/s against in-process
`infer`; the JSON also keeps loadtest's p95 and the server's queue and compute times.

  .venv/bin/python -m benchmarks.serve_load --artifact A[:ENGINE:PRECISION] [--artifact B ...] \
      [--requests 2000] [--concurrency 1 4 16] [--images-per-request 1 8] [--instances 1] [--ceiling A ...]
`--ceiling A`: the same cells (at --ceiling-concurrency) with `detect` stopped before decoding, after decoding and
after predicting (`toolkit serve --stage`), each with one decoding thread (as `serve` decoded before) and with the
default: where a request's fixed cost goes and how high the server goes when the model costs nothing.
Writes benchmarks/results/serve_load.{md,json} with the machine fingerprint and the command.
Nothing listens beyond 127.0.0.1; every loop stops at its request count or its time limit.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result

RESULTS = Path(__file__).parent / "results"


def in_process(folder: Path, artifact: str, engine: str, precision: str) -> dict:
    from toolkit.pipelines.infer import InferConfig, run_inference

    cfg = InferConfig(engine=engine, precision=precision, overwrite=True)  # default batch and workers
    with tempfile.TemporaryDirectory() as tmp:
        s = run_inference(folder, artifact, Path(tmp) / "p.csv", cfg, progress=False, log=lambda *_: None)
    return {k: s[k] for k in ("images_found", "wall_s", "images_per_s", "engine_open_s", "images_per_s_after_open")}


def run(spec: str, args, folder: Path, pool: tuple[list[bytes], str], log=print) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.serving.loadtest import LoadConfig, ServeOptions, loadtest

    artifact, engine, precision = [*spec.split(":"), "onnxruntime", "fp32"][:3]
    model = Artifact.open(artifact).model_name
    log(f"{model}: in-process infer ({engine} {precision}) on {args.in_process_images} images ...")
    local = in_process(folder, artifact, engine, precision)
    log(f"  {local['images_per_s_after_open']:.1f} images/s after open")
    # the served cells are `toolkit loadtest` of the artifact (served on loopback meanwhile, the same JPEGs);
    # the reference is measured again after them and the two averaged: this 2-core VM drifts by a few percent
    # over the half hour a ViT-B/16 run takes (two reps of one served cell differed by 8%)
    cfg = LoadConfig(tuple(args.concurrency), tuple(args.images_per_request), args.requests, args.time_limit,
                     warmup_requests=args.warmup)  # fmt: skip
    serve = ServeOptions(engine, precision, args.instances, args.max_batch, args.max_queue_delay_us)
    lt = loadtest(artifact, cfg, serve=serve, progress=False, log=log, pool=pool)
    after = in_process(folder, artifact, engine, precision)
    log(f"  in-process again: {after['images_per_s_after_open']:.1f} images/s after open")
    ref = (local["images_per_s_after_open"] + after["images_per_s_after_open"]) / 2
    for cell in lt["cells"]:
        cell["vs_in_process"] = cell["images_per_s"] / ref
    local = {
        **local,
        "before_images_per_s_after_open": local["images_per_s_after_open"],
        "after_images_per_s_after_open": after["images_per_s_after_open"],
        "images_per_s_after_open": ref,
    }
    return {"model": model, "artifact": artifact, "engine": engine, "precision": precision,
            "instances": args.instances, "max_batch": args.max_batch, "max_queue_delay_us": args.max_queue_delay_us,
            "in_process": local, "cells": lt["cells"],
            "loadtest": {k: v for k, v in lt.items() if k != "cells"}}  # fmt: skip


CEILING_VARIANTS = (  # (stage, decode threads): "before" decodes a batch's images on one thread, as `serve` did
    ("none", 1),
    ("decode", 1),
    ("decode", 0),  # 0: the server's default (one thread per core)
    ("predict", 1),
    ("predict", 0),
)


def ceiling(spec: str, args, pool: tuple[list[bytes], str], log=print) -> dict:
    """Where a request's fixed cost goes, and the server's ceiling: the artifact served with `detect` stopping
    at nothing (the gRPC + Triton + PyTriton hand-over alone), after decoding, or predicting, each with one
    decoding thread (as before) and with the default; the same cells for each, one after another in one run."""
    from toolkit.artifact import Artifact
    from toolkit.serving.loadtest import LoadConfig, ServeOptions, loadtest

    artifact, engine, precision = [*spec.split(":"), "onnxruntime", "fp32"][:3]
    cfg = LoadConfig(tuple(args.ceiling_concurrency), tuple(args.images_per_request), args.requests,
                     args.time_limit, warmup_requests=args.warmup)  # fmt: skip
    out = []
    for stage, threads in CEILING_VARIANTS:
        log(f"ceiling: stage {stage}, decode threads {threads or 'default'} ...")
        serve = ServeOptions(engine, precision, args.instances, args.max_batch, decode_threads=threads or None,
                             stage=stage)  # fmt: skip
        lt = loadtest(artifact, cfg, serve=serve, progress=False, log=lambda *_: None, pool=pool)
        out.append({"stage": stage, "decode_threads": threads or "default", "cells": lt["cells"]})
    return {"model": Artifact.open(artifact).model_name, "artifact": artifact, "engine": engine,
            "precision": precision, "variants": out}  # fmt: skip


def reference_loop(address: str, pool: list[bytes], requests: int, concurrency: int, per_request: int) -> dict:
    """The closed loop this benchmark ran before `toolkit loadtest` existed (its own code, kept as an independent
    reference): `requests` requests of `per_request` images from `concurrency` threads, one client each."""
    import threading
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient

    lock, state, latencies = threading.Lock(), {"next": 0, "failed": 0}, []

    def worker() -> None:
        client = grpcclient.InferenceServerClient(address)
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            arr = np.empty((per_request, 1), dtype=object)
            arr[:, 0] = [pool[(i * per_request + j) % len(pool)] for j in range(per_request)]
            inp = grpcclient.InferInput("image", list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            t0 = time.perf_counter()
            try:
                client.infer("detect", [inp], client_timeout=120)
                ok = True
            except Exception:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                state["failed"] += 0 if ok else 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"images_per_s": len(latencies) * per_request / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "failed_requests": state["failed"]}  # fmt: skip


def agreement(spec: str, args, pool: tuple[list[bytes], str], log=print) -> dict:
    """`toolkit loadtest` and the reference loop against one served artifact, on the same cells, alternating
    (two rounds each), the same JPEG pool; each measured run preceded by `--warmup` requests."""
    from toolkit.serving.loadtest import LoadConfig, ServeOptions, loadtest, served

    artifact, engine, precision = [*spec.split(":"), "onnxruntime", "fp32"][:3]
    rows = []
    with served(Path(artifact), ServeOptions(engine, precision, args.instances, args.max_batch), log) as srv:
        for concurrency, per_request in ((1, 1), (16, 8)):
            for rnd in range(2):
                reference_loop(srv["grpc"].hostport, pool[0], args.warmup, concurrency, per_request)
                ref = reference_loop(srv["grpc"].hostport, pool[0], args.requests, concurrency, per_request)
                cfg = LoadConfig((concurrency,), (per_request,), args.requests, warmup_requests=args.warmup)
                lt = loadtest(str(srv["grpc"]), cfg, progress=False, log=lambda *_: None, pool=pool)["cells"][0]
                rows.append({"concurrency": concurrency, "images_per_request": per_request, "round": rnd,
                             "reference": ref, "loadtest": {k: lt[k] for k in ("images_per_s", "p50_ms", "p99_ms",
                                                                               "failed_requests")}})  # fmt: skip
                log(f"agreement {concurrency} x {per_request} round {rnd}: reference "
                    f"{ref['images_per_s']:.1f} images/s, loadtest {lt['images_per_s']:.1f}")  # fmt: skip
    return {"artifact": artifact, "rows": rows}


def agreement_markdown(a: dict) -> list[str]:
    lines = [
        f"## `toolkit loadtest` against the closed loop this benchmark ran before it (`{a['artifact']}`)",
        "",
        "One server, the same cells and JPEGs, the two alternating (two rounds each).",
        "",
        "| concurrency x images | round | reference images/s (p50 ms) | loadtest images/s (p50 ms) | loadtest / "
        "reference |",
        "|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        ref, lt = r["reference"], r["loadtest"]
        lines.append(f"| {r['concurrency']} x {r['images_per_request']} | {r['round']} | {ref['images_per_s']:.1f} "
                     f"({ref['p50_ms']:.1f}) | {lt['images_per_s']:.1f} ({lt['p50_ms']:.1f}) | "
                     f"{lt['images_per_s'] / ref['images_per_s']:.3f} |")  # fmt: skip
    return [*lines, ""]


def ceiling_markdown(c: dict) -> list[str]:
    cells = [(x["concurrency"], x["images_per_request"]) for x in c["variants"][0]["cells"]]
    head = " | ".join(f"{k} x {b}: images/s (p50 ms)" for k, b in cells)
    lines = [
        f"## The server's ceiling: {c['model']} ({c['engine']} {c['precision']}), `detect` stopped at each stage",
        "",
        "`none`: the request is answered before decoding (gRPC, Triton's queue and PyTriton's hand-over alone); "
        "`decode`: after decoding and preprocessing; `predict`: the model too. One decoding thread is how "
        "`toolkit serve` decoded a batch before; `default` decodes a batch's images on one thread per core.",
        "",
        f"| stage | decode threads | {head} | server compute ms per request at the last cell |",
        "|---|---|" + "---|" * len(cells) + "---|",
    ]
    for v in c["variants"]:
        figures = " | ".join(f"{x['images_per_s']:.0f} ({x['p50_ms']:.1f})" for x in v["cells"])
        srv = v["cells"][-1].get("server", {})
        compute = f"{srv['compute_ms']:.2f}" if "compute_ms" in srv else "-"
        lines.append(f"| {v['stage']} | {v['decode_threads']} | {figures} | {compute} |")
    last = {(v["stage"], v["decode_threads"]): v["cells"][-1] for v in c["variants"]}
    k, b = cells[-1]
    if ("decode", 1) in last and ("decode", "default") in last:
        one, many = last[("decode", 1)]["images_per_s"], last[("decode", "default")]["images_per_s"]
        lines += [
            "",
            f"The ceiling with a model that does nothing after decoding, at {k} x {b}: {one:.0f} images/s "
            f"decoding on one thread (as before), {many:.0f} on the default threads ({many / one:.2f}x).",
        ]
    return [*lines, ""]


def markdown(res: list[dict], env: dict, command: str, ceilings: list[dict] = (), agreements: list[dict] = ()) -> str:
    lines = [
        "# `toolkit serve` under load on loopback, next to in-process `toolkit infer` (one run)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, onnxruntime {env['versions'].get('onnxruntime')}, "
        f"openvino {env['versions'].get('openvino')}; server and load generator share the machine.",
        "",
    ]
    for r in res:
        loc = r["in_process"]
        lines += [
            f"## {r['model']} ({r['engine']} {r['precision']}, "
            f"{r['instances']} instance(s), max batch {r['max_batch']}, queue delay "
            f"{r.get('max_queue_delay_us', 2000)} us)",
            "",
            f"In-process `toolkit infer` on {loc['images_found']} files (the same JPEGs, cycled), measured before "
            f"and after the served cells: {loc['before_images_per_s_after_open']:.1f} and "
            f"{loc['after_images_per_s_after_open']:.1f} images/s after opening the engine; the ratios use their "
            f"mean, **{loc['images_per_s_after_open']:.1f} images/s**.",
            "",
            "| concurrency | images/request | requests | errors | p50 ms | p90 ms | p99 ms | images/s "
            "| vs in-process |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in r["cells"]:
            note = " (time limit)" if c["stopped_by"] == "duration" else ""
            lines.append(
                f"| {c['concurrency']} | {c['images_per_request']} | {c['requests']}{note} | {c['errors']} | "
                f"{c['p50_ms']:.1f} | {c['p90_ms']:.1f} | {c['p99_ms']:.1f} | {c['images_per_s']:.1f} | "
                f"**{c['vs_in_process']:.2f}x** |"
            )
        lines += ["", *where_the_time_goes(r), ""]
    for c in ceilings:
        lines += ceiling_markdown(c)
    for a in agreements:
        lines += agreement_markdown(a)
    return "\n".join(lines)


def where_the_time_goes(r: dict) -> list[str]:
    """From this run's own cells: the fixed cost of a request and the marginal cost of an image in it."""
    cell = {(c["concurrency"], c["images_per_request"]): c for c in r["cells"]}
    if (1, 1) not in cell or (1, 8) not in cell:
        return []
    fixed, per8 = cell[(1, 1)]["p50_ms"], cell[(1, 8)]["p50_ms"]
    marginal = (per8 - fixed) / 7
    local_ms = 1000 / r["in_process"]["images_per_s_after_open"]
    return [
        f"Where the time goes (concurrency 1, p50): a 1-image request takes {fixed:.1f} ms and each further image "
        f"in a request {marginal:.2f} ms; in-process `infer` spends {local_ms:.2f} ms of wall time per image. "
        "A request pays gRPC, Triton's queue and PyTriton's hand-over to the Python model (the stub process, "
        "shared memory, a socket to the callable) once; the callable then decodes its images on a thread per "
        "core beside the engine's threads, while in-process `infer` decodes in worker processes. Where the "
        "model costs far more than a decode (ViT-B/16) those costs hide behind it and the server matches "
        "in-process throughput once two or more requests overlap; where it costs almost nothing (the tiny "
        "preset) they are the whole bill, so batching images into requests and running requests concurrently "
        "is what closes the gap.",
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", action="append", default=[], help="ARTIFACT[:ENGINE:PRECISION]")
    ap.add_argument("--requests", type=int, default=2000, help="requests per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--images-per-request", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--images", type=int, default=256, help="distinct JPEGs (in-process folder and request pool)")
    ap.add_argument("--in-process-images", type=int, default=2048, help="files for in-process infer (the pool, cycled)")
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds per cell at most")
    ap.add_argument("--warmup", type=int, default=32, help="requests per cell before it is measured")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load")
    ap.add_argument("--ceiling", action="append", default=[], help="ARTIFACT[:ENGINE:PRECISION]: measure the "
                    "server's ceiling and fixed cost with `detect` stopped at each stage")  # fmt: skip
    ap.add_argument("--ceiling-concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--agreement", action="append", default=[], help="ARTIFACT[:ENGINE:PRECISION]: loadtest against "
                    "the closed loop this benchmark ran before it, one server, alternating")  # fmt: skip
    args = ap.parse_args(argv)
    from toolkit.serving.loadtest import image_pool

    pool = image_pool(None, args.images)  # loadtest's own pool of that many images, made once for every part
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(args.in_process_images):  # long enough that worker start-up does not flatter it
            (folder / f"{i:05d}.jpg").write_bytes(pool[0][i % len(pool[0])])
        for spec in args.artifact:
            results.append(run(spec, args, folder, pool))
    ceilings = [ceiling(spec, args, pool) for spec in args.ceiling]
    agreements = [agreement(spec, args, pool) for spec in args.agreement]
    env = environment()
    command = command_line("benchmarks.serve_load", argv)
    record = {"environment": env, "command": command, "results": results, "ceilings": ceilings,
              "agreements": agreements}  # fmt: skip
    write_result(args.out, record, markdown(results, env, command, ceilings, agreements))


if __name__ == "__main__":
    main()
