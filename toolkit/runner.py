"""The one runner loop: source -> what is left -> predictions -> committed output, under every runner.

Local `toolkit infer`, `--ray` and `--server` share this loop and the output contract (toolkit/row_log.py for
.csv / .jsonl, toolkit/parquet_parts.py for a directory of Parquet parts); each supplies only a transport, the
object that turns chunks of (path, key) inputs into predictions (`Transport.map`): decode workers and a local
engine, a Ray Data actor pool, or a Triton server. Keys are computed once, by the source (toolkit/sources.py);
what is already done is filtered by the output's done index; every row is written by `detection_rows`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from toolkit.data.images import Skipped
from toolkit.row_log import OutputPaths, PredictionLog, ResumeError, Todo

# `prediction` is the model's decision (generated | real), not a ground-truth label (named `label` before @3)
COLUMNS = ("path", "logit", "p_generated", "prediction")

__all__ = ["COLUMNS", "Result", "ResumeError", "Tally", "Transport", "check_out", "detection_rows", "open_output",
           "run_loop", "warn_if_empty"]  # fmt: skip


@dataclass
class Result:
    """One batch back from a transport: the predicted keys with their outputs, the skipped inputs, and the source
    chunk of each (predicted keys first, then skipped), so the output can track which chunks are complete."""

    keys: list[str]
    outputs: dict
    skipped: list[Skipped]
    chunks: list[int]


class Transport(Protocol):
    def map(self, chunks: Iterator[list[Todo]]) -> Iterator[Result]: ...


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
        """The run's summary, written beside the output (`plog`: the log it filled)."""
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
        {"path": k, "logit": f"{z:.6g}", "p_generated": f"{p:.6f}", "prediction": "generated" if g else "real"}
        for k, z, p, g in zip(keys, outputs["logit"], outputs["p_generated"], outputs["is_generated"], strict=True)
    ]


def check_out(out: str | os.PathLike) -> None:
    """Refuse a bad --out before anything is opened: a .csv / .jsonl file, or a directory of Parquet parts."""
    if Path(out).suffix.lower() in (".csv", ".jsonl"):
        OutputPaths.for_file(out)
    elif Path(out).suffix:
        raise ValueError(f"{out}: predictions go to a .csv or .jsonl file, or a directory of Parquet parts")


def open_output(out: str | os.PathLike, identity: dict, root: str, overwrite: bool = False):
    """A `PredictionLog` for a .csv / .jsonl file, a `PartitionedLog` for a directory (no such suffix)."""
    check_out(out)
    if Path(out).suffix.lower() in (".csv", ".jsonl"):
        return PredictionLog(out, COLUMNS, identity, root, overwrite)
    from toolkit.parquet_parts import PartitionedLog

    return PartitionedLog(out, COLUMNS, identity, root, overwrite)


def run_loop(src, plog, transport: Transport, label: str, progress: bool = True, log=print) -> tuple[Tally, int]:
    """Fill `plog` (an output, not yet entered) with predictions of what `src` still lacks; -> (tally, done before)."""
    from toolkit.progress import progress_bar

    tally = Tally()
    with plog:
        done_before = plog.n_rows + plog.n_skipped
        left = max(len(src) - done_before, 0)
        if done_before:
            log(f"resuming: {done_before} of {len(src)} files already done, {left} to go")
        with progress_bar(label, left, progress) as advance:
            for res in transport.map(plog.todo(src)):
                rows = detection_rows(res.keys, res.outputs) if res.keys else []
                plog.append(rows, res.skipped, res.chunks)
                tally.add(rows, res.skipped, res.outputs)
                advance(len(rows) + len(res.skipped), skipped=tally.n_skip)
    return tally, done_before


def warn_if_empty(src, given, warn) -> None:
    from toolkit.io import display_path

    if not len(src):
        what = "other files ignored" if src.kind == "folder" else "blank lines"
        warn(f"warning: {display_path(given)} has no image files ({src.ignored} {what})")
