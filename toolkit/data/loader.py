"""Image files -> preprocessed batches, decoded in parallel worker processes so an engine is not starved.

Used by `toolkit infer` and the end-to-end figures of `toolkit bench`. Batches come back in input
order; at most `prefetch` batches are in flight, so memory stays bounded on any folder size. A file
that cannot be decoded becomes a `Skipped` with its reason (toolkit/data/images.py) and never stops
the run.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.data.images import MAX_PIXELS, ImageDecodeError, Skipped, is_image_file, load_image
from toolkit.preprocess import PreprocessConfig, preprocess


@dataclass
class Batch:
    array: np.ndarray  # (n_ok, 3, s, s) float32
    paths: list[str]  # the decoded files, in order, one per row of `array`
    skipped: list[Skipped]


def discover_images(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Recursive, sorted: (files with an image extension, other files ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    images, other = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            (images if is_image_file(p) else other).append(p)
    return images, other


def load_batch(paths: Sequence[str], cfg: dict, max_pixels: int = MAX_PIXELS) -> Batch:
    """Decode + preprocess; runs inside worker processes (arguments and result are picklable)."""
    pc = PreprocessConfig.from_dict(cfg)
    arrays, ok, skipped = [], [], []
    for p in paths:
        try:
            arrays.append(preprocess(load_image(p, max_pixels), pc))
            ok.append(str(p))
        except ImageDecodeError as e:
            skipped.append(Skipped(str(p), e.reason))
        except Exception as e:  # anything PIL throws late (e.g. during resize of a broken file)
            skipped.append(Skipped(str(p), f"cannot decode ({type(e).__name__}: {e})"))
    array = np.stack(arrays) if arrays else np.zeros((0, 3, pc.size, pc.size), np.float32)
    return Batch(array, ok, skipped)


def batches(
    paths: Sequence[str | Path],
    cfg: dict,
    batch_size: int,
    workers: int = 2,
    prefetch: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[Batch]:
    """Yield `Batch`es of `batch_size` paths in order; `workers` = 0 decodes in this process."""
    chunks = [[str(p) for p in paths[i : i + batch_size]] for i in range(0, len(paths), batch_size)]
    if workers <= 0:
        for c in chunks:
            yield load_batch(c, cfg, max_pixels)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    prefetch = prefetch or 2 * workers
    # spawn, not fork: the parent may hold onnxruntime / torch thread pools that fork does not copy safely
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        it = iter(chunks)
        for c in it:
            pending.append(pool.submit(load_batch, c, cfg, max_pixels))
            if len(pending) >= prefetch:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load_batch, nxt, cfg, max_pixels))
            yield fut.result()
