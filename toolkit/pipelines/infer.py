"""Local folder inference: `toolkit infer images/ --artifact A --engine E --out preds.csv`.

A runner adds transport and bookkeeping only: the files are decoded in worker processes and go
through the one prediction path (toolkit/predict.py); the output contract (lock, resume, commit,
lossless names) is toolkit/outputs.py. Order of work: open and verify the artifacts and the engines,
then take the lock and touch the output (a run that cannot start writes nothing).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.images import Skipped
from toolkit.outputs import OutputPaths, PredictionLog, ResumeError
from toolkit.sources import open_source

COLUMNS = ("path", "logit", "p_generated", "label")

__all__ = ["COLUMNS", "InferConfig", "ResumeError", "Tally", "detection_rows", "run_inference"]


@dataclass
class InferConfig:
    engine: str = "onnxruntime"
    precision: str = "fp32"
    provider: str = "cpu"
    batch: int = 32
    workers: int = 2
    overwrite: bool = False
    purify: str | None = None  # purifier artifact run before the detector (same engine and precision)


@dataclass
class Tally:
    """What one run did, counted the same way by every runner, and the summary it writes."""

    n_rows: int = 0
    n_skip: int = 0
    n_gen: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, rows: list[dict], skipped: list[Skipped], outputs: dict) -> None:
        self.n_rows += len(rows)
        self.n_skip += len(skipped)
        self.n_gen += int(outputs["is_generated"].sum()) if rows else 0
        self.reasons.update(s.reason.split(" (")[0].split(":")[0] for s in skipped)

    def finish(self, src, plog, done_before: int, wall: float, open_s: float, **extra) -> dict:
        """The run's summary, written beside the output (`plog`: the PredictionLog / PartitionedLog it filled)."""
        from toolkit.io import write_json

        n = self.n_rows + self.n_skip
        summary = {
            "images_found": len(src),
            "root": src.root,
            "other_files_ignored": src.ignored,
            "already_done": done_before,
            "predicted_now": self.n_rows,
            "skipped_now": self.n_skip,
            "skipped_reasons_now": dict(self.reasons),
            "generated_now": self.n_gen,
            "rows_total": plog.n_rows,
            "skipped_total": plog.n_skipped,
            "wall_s": wall,
            "images_per_s": n / wall if wall > 0 else None,
            # the same without opening the engines: what a long run converges to
            "engine_open_s": open_s,
            "images_per_s_after_open": n / (wall - open_s) if wall > open_s else None,
            "predictions": str(plog.paths.predictions),
            "skipped": str(plog.paths.skipped),
            **extra,
        }
        write_json(plog.paths.summary, summary)
        return summary


def detection_rows(keys: list[str], outputs: dict) -> list[dict]:
    """Prediction outputs -> output rows (the same text for every runner)."""
    return [
        {"path": k, "logit": f"{z:.6g}", "p_generated": f"{p:.6f}", "label": "generated" if g else "real"}
        for k, z, p, g in zip(keys, outputs["logit"], outputs["p_generated"], outputs["is_generated"], strict=True)
    ]


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
    from toolkit.data.loader import batches
    from toolkit.predict import EngineChoice, PredictionPath
    from toolkit.progress import progress_bar

    cfg = cfg or InferConfig()
    warn = warn or log
    OutputPaths.for_file(out)  # a bad --out is refused before anything is opened
    src = open_source(images)
    warn_if_empty(src, images, warn)
    path = PredictionPath(artifact, cfg.purify, EngineChoice(cfg.engine, cfg.precision, cfg.provider), cfg.batch)
    if path.auto_reason:
        log(f"--engine auto: {path.auto_reason}")
    plog = PredictionLog(out, COLUMNS, path.identity(), src.root, cfg.overwrite)  # touches nothing until entered
    t0 = time.perf_counter()
    tally = Tally()
    with path:  # engines open: from here on the output may be touched
        t_ready = time.perf_counter()
        with plog:
            done_before = len(plog.done)
            todo = [(p, k) for p, k in src.items if k not in plog.done]
            if plog.done:
                log(f"resuming: {done_before} of {len(src)} files already done, {len(todo)} to go")
            key_of = dict(todo)
            with progress_bar("infer", len(todo), progress) as advance:
                for b in batches([p for p, _ in todo], path.preprocess, cfg.batch, cfg.workers):
                    outputs = path.predict(b)
                    rows = detection_rows([key_of[p] for p in b.paths], outputs) if b.paths else []
                    skipped = [Skipped(key_of[s.path], s.reason) for s in b.skipped]
                    plog.append(rows, skipped)
                    tally.add(rows, skipped, outputs)
                    advance(len(b.paths) + len(b.skipped), skipped=tally.n_skip)
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


def warn_if_empty(src, given, warn) -> None:
    from toolkit.io import display_path

    if not len(src):
        what = "other files ignored" if src.kind == "folder" else "blank lines"
        warn(f"warning: {display_path(given)} has no image files ({src.ignored} {what})")
