"""Inference through a server: `toolkit infer SOURCE --server grpc://HOST:PORT [--concurrency 16]`.

The transport of the one runner loop (toolkit/runner.py) for `toolkit serve`: this process reads each file's
bytes (with the same regular-file and size policy as everywhere, toolkit/data/images.py) and sends them to the
server's `detect` model, which decodes, preprocesses and predicts with the one prediction path
(toolkit/serving/server.py). Up to `concurrency` requests are in flight; results are committed as they come back.

The output is keyed to the server's id (a digest of its artifacts' seals, engine, precision and threshold), so a
rerun resumes only against a server that predicts the same way. If the server goes away mid-run, requests are
retried with backoff for `retry_s` (toolkit/serving/client.py), then the run stops with one line (exit 1: the
environment); every row committed so far stays, and rerunning the same command resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator
from dataclasses import asdict
from itertools import chain, islice
from pathlib import Path

import numpy as np

from toolkit.data.images import ImageDecodeError, Skipped, read_file
from toolkit.row_log import Todo
from toolkit.runner import Result, check_out, open_output, run_loop, warn_if_empty
from toolkit.serving.client import ClientConfig, DetectClient


def _request(client: DetectClient, todo: list[Todo]) -> Result:
    """Read one request's files, send the readable ones; -> the predicted keys, outputs and skipped inputs."""
    sent, payloads, skipped = [], [], []
    for t in todo:
        try:
            payloads.append(read_file(t.path))
            sent.append(t)
        except ImageDecodeError as e:
            skipped.append((t, Skipped(t.key, e.reason)))
    if payloads:
        res = client.detect(payloads)
        ok = np.array([not e for e in res["error"]], bool)
        skipped += [(t, Skipped(t.key, e.decode("utf-8", "replace"))) for t, e in zip(sent, res["error"], strict=True)
                    if e]  # fmt: skip
        outputs = {k: res[k][ok] for k in ("logit", "p_generated", "is_generated")}
        good = [t for t, g in zip(sent, ok, strict=True) if g]
    else:
        outputs, good = {}, []
    return Result([t.key for t in good], outputs, [s for _, s in skipped],
                  [t.chunk for t in good] + [t.chunk for t, _ in skipped])  # fmt: skip


class ServerTransport:
    """Requests of `per_request` inputs, `concurrency` in flight, results in completion order."""

    def __init__(self, client: DetectClient, per_request: int, concurrency: int):
        self.client, self.per_request, self.concurrency = client, per_request, concurrency

    def map(self, chunks: Iterator[list[Todo]]) -> Iterator[Result]:
        items = chain.from_iterable(chunks)
        requests = iter(lambda: list(islice(items, self.per_request)), [])
        pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="infer-client")
        try:
            pending: set[cf.Future] = set()
            while True:
                while len(pending) < 2 * self.concurrency and (req := next(requests, None)) is not None:
                    pending.add(pool.submit(_request, self.client, req))
                if not pending:
                    break
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    yield f.result()  # a server that stayed away raises here
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def run_server_inference(
    source: str | Path,
    out: str | Path,
    batch: int = 8,
    client_cfg: ClientConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
    warn=None,
) -> dict:
    """Predict every image of `source` (folder or file list) on a `toolkit serve` server; -> summary (as local
    infer's). `batch`: images per request (at most the server's max batch)."""
    from toolkit.sources import open_source

    cfg, warn = client_cfg or ClientConfig(), warn or log
    if cfg.concurrency < 1 or batch < 1:
        raise ValueError("need --concurrency >= 1 and --batch >= 1")
    check_out(out)  # a bad --out is refused before the server is asked
    src = open_source(source)
    warn_if_empty(src, source, warn)
    t0 = time.perf_counter()
    client = DetectClient(cfg)
    try:
        server_id = client.connect()  # one clear error when there is no server; nothing written yet
        per_request = min(batch, client.max_batch or batch)
        if per_request < batch:
            log(f"--batch {batch} is above the server's max batch: sending {per_request} images per request")
        plog = open_output(out, {"server": server_id}, src.root, overwrite)
        t_ready = time.perf_counter()
        transport = ServerTransport(client, per_request, cfg.concurrency)
        tally, done_before = run_loop(src, plog, transport, "infer (server)", progress, log)
    finally:
        client.close()
    return tally.finish(
        src,
        plog,
        done_before,
        time.perf_counter() - t0,
        t_ready - t0,  # reaching the server
        engine="server",
        precision=None,
        server={**asdict(cfg), "id": server_id, "images_per_request": per_request},
    )
