"""Folder inference that never loses work: `toolkit infer images/ --artifact A --engine E --out preds.csv`.

Output safety and resume:
- rows are appended one batch at a time, flushed and fsync'ed, so a kill loses at most the batch in
  flight; a torn last line (killed mid-write) is cut off on the next start;
- the same command resumes: files already in the predictions or in the skipped list are not run again,
  so there is exactly one row per readable file and one skipped entry per unreadable file;
- `<out>.meta.json` records what produced the rows (artifact hash, engine, precision); resuming with
  anything else is refused instead of mixing predictions.
Unreadable files (every kind in toolkit/data/images.py) go to `<out>.skipped.csv` with the reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.data.images import Skipped

COLUMNS = ("path", "logit", "p_generated", "label")


class ResumeError(ValueError):
    pass


@dataclass
class InferConfig:
    engine: str = "onnxruntime"
    precision: str = "fp32"
    provider: str = "cpu"
    batch: int = 32
    workers: int = 2
    overwrite: bool = False
    purify: str | None = None  # purifier artifact run before the detector (same engine and precision)


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a kill during a write) so appending starts on a line boundary."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _done_paths(path: Path, fmt: str) -> set[str]:
    _repair_tail(path)
    if not path.is_file():
        return set()
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return {json.loads(line)["path"] for line in text.splitlines() if line.strip()}
    return {row["path"] for row in csv.DictReader(io.StringIO(text))}


class _Appender:
    """Append rows (CSV with one header, or JSON lines); each `write` is flushed and fsync'ed."""

    def __init__(self, path: Path, columns: tuple[str, ...], fmt: str):
        self.path, self.columns, self.fmt = path, columns, fmt
        new = not path.is_file() or path.stat().st_size == 0
        self.f = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        if new and fmt == "csv":
            self.f.write(",".join(columns) + "\n")
            self._sync()

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        if self.fmt == "csv":
            w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
            w.writerows(rows)
        else:
            buf.writelines(json.dumps(r) + "\n" for r in rows)
        self.f.write(buf.getvalue())  # one write per batch
        self._sync()

    def _sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def output_paths(out: Path) -> tuple[Path, Path, Path, str]:
    fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: predictions file must end in .csv or .jsonl")
    return out, out.with_name(out.stem + ".skipped.csv"), out.with_name(out.stem + ".meta.json"), fmt


def run_inference(
    images: str | Path,
    artifact: str | Path,
    out: str | Path,
    cfg: InferConfig | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Predict every image under `images`; resumable; -> summary dict (also written as <out>.summary.json)."""
    from toolkit.artifact import read_manifest
    from toolkit.data.loader import batches, discover_images
    from toolkit.engines import open_engine
    from toolkit.io import write_json
    from toolkit.progress import progress_bar

    cfg = cfg or InferConfig()
    out, skipped_path, meta_path, fmt = output_paths(Path(out))
    manifest = read_manifest(artifact)
    if manifest["kind"] != "detector":
        raise ValueError(f"{artifact}: 'toolkit infer' runs detector artifacts, this one is {manifest['kind']!r}")
    onnx_file = manifest["precisions"].get(cfg.precision, {}).get("file")
    pre, purifier_manifest = manifest["preprocess"], None
    if cfg.purify:
        purifier_manifest = read_manifest(cfg.purify)
        if purifier_manifest["kind"] != "purifier":
            raise ValueError(
                f"{cfg.purify}: --purify needs a purifier artifact, this one is {purifier_manifest['kind']!r}"
            )
        if purifier_manifest["preprocess"]["size"] != pre["size"]:
            raise ValueError(
                f"{cfg.purify} works at {purifier_manifest['preprocess']['size']} px, the detector "
                f"{artifact} at {pre['size']} px: export them at one size"
            )
        pre = {**pre, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # pixels in [0, 1] for the purifier
        # the purifier runs at the same precision when it has it (it has no int8 variant), else fp32
        p_precision = cfg.precision if cfg.precision in purifier_manifest["precisions"] else "fp32"
    meta = {
        "artifact": str(Path(artifact).resolve()),
        "artifact_file_sha256": manifest["files"].get(onnx_file) if onnx_file else None,
        "source_sha256": manifest.get("source_sha256"),
        "engine": cfg.engine,
        "precision": cfg.precision,
        "threshold": manifest["threshold"],
        "format": fmt,
        "purifier_files": purifier_manifest["files"] if purifier_manifest else None,
    }
    if cfg.overwrite:
        for p in (out, skipped_path, meta_path):
            p.unlink(missing_ok=True)
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = [
            k
            for k in ("artifact_file_sha256", "source_sha256", "engine", "precision", "threshold", "purifier_files")
            if old.get(k) != meta[k]
        ]
        if diff:
            raise ResumeError(
                f"{out} was written with a different {', '.join(diff)} "
                f"({', '.join(f'{k}={old.get(k)}' for k in diff)}); "
                "use another --out, or --overwrite to start again"
            )
    elif out.is_file() and out.stat().st_size > 0:
        raise ResumeError(f"{out} exists but has no {meta_path.name}: not written by 'toolkit infer'; use --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, meta)

    all_images, ignored = discover_images(images)
    done = _done_paths(out, fmt) | _done_paths(skipped_path, "csv")
    todo = [p for p in all_images if str(p) not in done]
    if done:
        log(f"resuming: {len(done)} of {len(all_images)} files already done, {len(todo)} to go")
    threshold = float(manifest["threshold"])
    preds, skips = _Appender(out, COLUMNS, fmt), _Appender(skipped_path, ("path", "reason"), "csv")
    t0, n_rows, n_skip, n_gen, reasons = time.perf_counter(), 0, 0, 0, Counter()
    mean = np.asarray(manifest["preprocess"]["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(manifest["preprocess"]["std"], np.float32).reshape(1, 3, 1, 1)
    try:
        with contextlib.ExitStack() as stack:
            engine = stack.enter_context(open_engine(artifact, cfg.engine, cfg.precision, cfg.provider, manifest))
            purifier = None
            if cfg.purify:
                purifier = stack.enter_context(
                    open_engine(cfg.purify, cfg.engine, p_precision, cfg.provider, purifier_manifest)
                )
            t_ready = time.perf_counter()  # engines open (session creation, weight prepacking) from here on
            advance = stack.enter_context(progress_bar("infer", len(todo), progress))
            for b in batches(todo, pre, cfg.batch, cfg.workers):
                rows = []
                if len(b.paths):
                    x = b.array
                    if purifier is not None:  # pixels -> purified pixels -> the detector's normalisation
                        x = ((purifier.infer({"images": x})["purified"] - mean) / std).astype(np.float32)
                    logits = engine.infer({"images": x})["logit"].astype(np.float64)
                    for p, z in zip(b.paths, logits, strict=True):
                        rows.append(
                            {
                                "path": p,
                                "logit": f"{z:.6g}",
                                "p_generated": f"{_sigmoid(z):.6f}",
                                "label": "generated" if z > threshold else "real",
                            }
                        )
                    n_gen += int((logits > threshold).sum())
                preds.write(rows)
                skips.write([{"path": s.path, "reason": s.reason} for s in b.skipped])
                n_rows, n_skip = n_rows + len(rows), n_skip + len(b.skipped)
                reasons.update(_reason_kind(s) for s in b.skipped)
                advance(len(b.paths) + len(b.skipped), skipped=n_skip)
    finally:
        preds.close()
        skips.close()
    wall = time.perf_counter() - t0
    open_s = t_ready - t0
    total_rows = len(_done_paths(out, fmt))
    summary = {
        "images_found": len(all_images),
        "other_files_ignored": len(ignored),
        "already_done": len(done),
        "predicted_now": n_rows,
        "skipped_now": n_skip,
        "skipped_reasons_now": dict(reasons),
        "generated_now": n_gen,
        "rows_total": total_rows,
        "skipped_total": len(_done_paths(skipped_path, "csv")),
        "wall_s": wall,
        "images_per_s": (n_rows + n_skip) / wall if wall > 0 else None,
        # the same without opening the engines: what a long run converges to
        "engine_open_s": open_s,
        "images_per_s_after_open": (n_rows + n_skip) / (wall - open_s) if wall > open_s else None,
        "predictions": str(out),
        "skipped": str(skipped_path),
        **{k: meta[k] for k in ("engine", "precision")},
    }
    write_json(out.with_name(out.stem + ".summary.json"), summary)
    return summary


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z))) if z >= 0 else float(np.exp(z) / (1.0 + np.exp(z)))


def _reason_kind(s: Skipped) -> str:
    return s.reason.split(" (")[0].split(":")[0]
