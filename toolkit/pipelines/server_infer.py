"""Inference through a server: `toolkit infer SOURCE --server grpc://HOST:PORT [--concurrency 16]`.

The same contract as local `infer` (toolkit/outputs.py): one row per readable file, unreadable files with their
reason, a lock on the output, resumable. Only transport is added: this process reads each file's bytes (with
the same regular-file and size policy as everywhere, toolkit/data/images.py) and sends them to the server's
`detect` model, which decodes, preprocesses and predicts with the one prediction path (toolkit/serving/server.py).
Up to `concurrency` requests are in flight; results are committed as they come back.

The output is keyed to the server's id (a digest of its artifacts, engine, precision and threshold), so a
rerun resumes only against a server that predicts the same way. If the server goes away mid-run, requests are
retried with backoff for `retry_s` (toolkit/serving/client.py), then the run stops with one line; every row
committed so far stays, and rerunning the same command resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from toolkit.data.images import ImageDecodeError, Skipped, read_file
from toolkit.pipelines.infer import COLUMNS, Tally, detection_rows, warn_if_empty
from toolkit.serving.client import ClientConfig, DetectClient


def _request(client: DetectClient, chunk: list[tuple[str, str]]) -> tuple[list[dict], list[Skipped], dict]:
    """Read one chunk of (path, key), send the readable ones; -> rows, skipped, outputs of the predicted ones."""
    keys, payloads, skipped = [], [], []
    for path, key in chunk:
        try:
            payloads.append(read_file(path))
            keys.append(key)
        except ImageDecodeError as e:
            skipped.append(Skipped(key, e.reason))
    if not payloads:
        return [], skipped, {}
    res = client.detect(payloads)
    ok = np.array([not e for e in res["error"]], bool)
    skipped += [Skipped(k, e.decode("utf-8", "replace")) for k, e in zip(keys, res["error"], strict=True) if e]
    outputs = {k: res[k][ok] for k in ("logit", "p_generated", "is_generated")}
    rows = detection_rows([k for k, good in zip(keys, ok, strict=True) if good], outputs)
    return rows, skipped, outputs


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
    from toolkit.outputs import OutputPaths, open_log
    from toolkit.progress import progress_bar
    from toolkit.sources import open_source

    cfg, warn = client_cfg or ClientConfig(), warn or log
    if cfg.concurrency < 1 or batch < 1:
        raise ValueError("need --concurrency >= 1 and --batch >= 1")
    if Path(out).suffix.lower() in (".csv", ".jsonl"):
        OutputPaths.for_file(out)  # a bad --out is refused before the server is asked
    src = open_source(source)
    warn_if_empty(src, source, warn)
    t0 = time.perf_counter()
    client = DetectClient(cfg)
    server_id = client.connect()  # one clear error when there is no server; nothing written yet
    per_request = min(batch, client.max_batch or batch)
    if per_request < batch:
        log(f"--batch {batch} is above the server's max batch: sending {per_request} images per request")
    plog = open_log(out, COLUMNS, {"server": server_id}, src.root, overwrite)
    t_ready = time.perf_counter()
    tally = Tally()
    with plog:
        done_before = len(plog.done)
        todo = [(p, k) for p, k in src.items if k not in plog.done]
        if done_before:
            log(f"resuming: {done_before} of {len(src)} files already done, {len(todo)} to go")
        chunks = [todo[i : i + per_request] for i in range(0, len(todo), per_request)]
        pool = cf.ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="infer-client")
        try:
            with progress_bar("infer (server)", len(todo), progress) as advance:
                pending: set[cf.Future] = set()
                it = iter(chunks)
                while True:
                    while len(pending) < 2 * cfg.concurrency and (chunk := next(it, None)) is not None:
                        pending.add(pool.submit(_request, client, chunk))
                    if not pending:
                        break
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        rows, skipped, outputs = f.result()  # a server that stayed away raises here
                        plog.append(rows, skipped)
                        tally.add(rows, skipped, outputs)
                        advance(len(rows) + len(skipped), skipped=tally.n_skip)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
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
