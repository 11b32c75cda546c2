"""Local inference: `toolkit infer images/ --artifact A --engine E --out preds.csv`.

The transport of the one runner loop (toolkit/runner.py) for this machine: files are decoded in worker processes
(toolkit/data/loader.py) and go through the one prediction path (toolkit/predict.py). Order of work: open and
verify the artifacts and the engines, then take the lock and touch the output (a run that cannot start writes
nothing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.row_log import ResumeError, Todo
from toolkit.runner import COLUMNS, Result, Tally, check_out, detection_rows, open_output, run_loop, warn_if_empty
from toolkit.sources import open_source

__all__ = ["COLUMNS", "InferConfig", "LocalTransport", "ResumeError", "Tally", "detection_rows", "run_inference"]


@dataclass
class InferConfig:
    engine: str = "onnxruntime"
    precision: str = "fp32"
    provider: str = "cpu"
    batch: int = 32
    workers: int = 2
    overwrite: bool = False
    purify: str | None = None  # purifier artifact run before the detector (same engine and precision)


class LocalTransport:
    """Decode workers feeding one open prediction path, in order."""

    def __init__(self, path, batch: int, workers: int):
        self.path, self.batch, self.workers = path, batch, workers

    def map(self, chunks: Iterator[list[Todo]]) -> Iterator[Result]:
        from toolkit.data.loader import item_batches

        chunk_of: dict[str, int] = {}  # keys read ahead and not yet back: bounded by the loader's read-ahead

        def items():
            for chunk in chunks:
                for t in chunk:
                    chunk_of[t.key] = t.chunk
                    yield t.key, t.path

        for b in item_batches(items(), self.path.preprocess, self.batch, self.workers):
            outputs = self.path.predict(b)
            chunks_ = [chunk_of.pop(k) for k in [*b.paths, *(s.path for s in b.skipped)]]
            yield Result(b.paths, outputs, b.skipped, chunks_)


def run_inference(
    images: str | Path,
    artifact: str | Path,
    out: str | Path,
    cfg: InferConfig | None = None,
    progress: bool = True,
    log=print,
    warn=None,
) -> dict:
    """Predict every image under `images` (a folder, or a .txt / .parquet file list); resumable;
    -> summary dict (also written as <out>.summary.json)."""
    from toolkit.predict import EngineChoice, PredictionPath

    cfg = cfg or InferConfig()
    warn = warn or log
    check_out(out)  # a bad --out is refused before anything is opened
    src = open_source(images)
    warn_if_empty(src, images, warn)
    path = PredictionPath(artifact, cfg.purify, EngineChoice(cfg.engine, cfg.precision, cfg.provider), cfg.batch)
    if path.auto_reason:
        log(f"--engine auto: {path.auto_reason}")
    plog = open_output(out, path.identity(), src.root, cfg.overwrite)  # touches nothing until entered
    t0 = time.perf_counter()
    with path:  # engines open: from here on the output may be touched
        t_ready = time.perf_counter()
        tally, done_before = run_loop(src, plog, LocalTransport(path, cfg.batch, cfg.workers), "infer", progress, log)
    return tally.finish(
        src,
        plog,
        done_before,
        time.perf_counter() - t0,
        t_ready - t0,
        engine=path.choice.engine,
        precision=path.choice.precision,
        auto=path.auto_reason,
    )
