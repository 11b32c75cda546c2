"""`toolkit purify images/ --artifact P --out purified/`: every image through the purifier, written as PNG.

The output mirrors the input's relative paths and appends `.png` to the whole name (`a/pic.bmp` ->
`a/pic.bmp.png`), so `pic.bmp`, `pic.webp` and `pic.png` never overwrite each other. Resumable: each
output is written atomically, so one that exists is done. Unreadable files go to `out/skipped.csv`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def output_name(rel: Path) -> Path:
    return rel.with_name(rel.name + ".png")


def run_purify(
    images: str | Path,
    artifact: str | Path,
    out_dir: str | Path,
    engine: str = "onnxruntime",
    precision: str = "fp32",
    provider: str = "cpu",
    batch: int = 16,
    workers: int = 2,
    progress: bool = True,
    warn=print,
) -> dict:
    """Purify every image under `images` into `out_dir`; -> summary."""
    from PIL import Image

    from toolkit.data.loader import batches, discover_images
    from toolkit.io import atomic_path, display_path
    from toolkit.locks import exclusive_lock
    from toolkit.predict import EngineChoice, PredictionPath
    from toolkit.progress import progress_bar
    from toolkit.row_log import write_skipped_csv

    root, out = Path(images), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory: --out names the output folder")
    files, ignored = discover_images(root)
    if not files:
        warn(f"warning: {display_path(root)} has no image files ({len(ignored)} other files ignored)")

    def target(p: Path) -> Path:
        return out / output_name(p.relative_to(root))

    todo = [p for p in files if not target(p).is_file()]
    skipped, n, t = [], 0, time.perf_counter()
    path = PredictionPath(purifier=artifact, choice=EngineChoice(engine, precision, provider))
    with path, exclusive_lock(out / ".purify.lock", str(out)), progress_bar("purify", len(todo), progress) as adv:
        for b in batches(todo, path.preprocess, batch, workers):
            for p, img in zip(b.paths, path.predict(b).get("purified", []), strict=True):
                dst = target(Path(p))
                dst.parent.mkdir(parents=True, exist_ok=True)
                pixels = (np.transpose(img, (1, 2, 0)) * 255).round().clip(0, 255).astype(np.uint8)
                with atomic_path(dst) as tmp:
                    Image.fromarray(pixels).save(tmp, format="PNG")
            n += len(b.paths)
            skipped += b.skipped
            adv(len(b.paths) + len(b.skipped))
        if skipped:
            write_skipped_csv(out / "skipped.csv", skipped)
    wall = time.perf_counter() - t
    return {
        "purified_now": n,
        "already_done": len(files) - len(todo),
        "skipped": len(skipped),
        "out": str(out),
        "images_per_s": n / wall if wall > 0 else None,
    }
