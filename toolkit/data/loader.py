"""Image files (or encoded bytes) -> preprocessed batches; files are decoded in worker processes so an engine
is not starved.

Used by the prediction path (toolkit/predict.py) under every runner, calibration and bench. Batches come
back in input order; at most `prefetch` batches are in flight, so memory stays bounded on any folder size.
An item that cannot be decoded becomes a `Skipped` with its reason (toolkit/data/images.py) and never
stops the run. Workers die with the process that started them (a killed `infer` leaves no orphans) and
leave Ctrl-C to it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from toolkit.data.images import MAX_PIXELS, ImageDecodeError, Skipped, decode_image, is_image_file, load_image
from toolkit.preprocess import PreprocessConfig, preprocess


@dataclass
class Batch:
    array: np.ndarray  # (n_ok, 3, s, s) float32
    paths: list[str]  # the decoded items' keys (their paths, unless keys were given), one per row of `array`
    skipped: list[Skipped]  # keyed the same way


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


def _prepare(items, cfg: dict, decode, perturb=None) -> Batch:
    pc = PreprocessConfig.from_dict(cfg)
    arrays, ok, skipped = [], [], []
    for key, src in items:
        try:
            img = decode(src)
            arrays.append(preprocess(perturb(img) if perturb is not None else img, pc))
            ok.append(key)
        except ImageDecodeError as e:
            skipped.append(Skipped(key, e.reason))
        except Exception as e:  # anything PIL throws late (e.g. during resize of a broken file)
            skipped.append(Skipped(key, f"cannot decode ({type(e).__name__}: {e})"))
    array = np.stack(arrays) if arrays else np.zeros((0, 3, pc.size, pc.size), np.float32)
    return Batch(array, ok, skipped)


def load_batch(paths: Sequence[str], cfg: dict, max_pixels: int = MAX_PIXELS, perturb=None) -> Batch:
    """Files -> decode [-> perturb (toolkit/perturb.py)] -> preprocess; runs inside worker processes (arguments
    and result are picklable)."""
    return _prepare([(str(p), p) for p in paths], cfg, lambda p: load_image(p, max_pixels), perturb)


def load_items(items: Sequence[tuple[str, str]], cfg: dict, max_pixels: int = MAX_PIXELS, perturb=None) -> Batch:
    """(key, file) items -> the same as `load_batch`, with rows and skipped entries named by their keys (two
    spellings of one file are two items)."""
    return _prepare([(k, p) for k, p in items], cfg, lambda p: load_image(p, max_pixels), perturb)


def decode_batch(items: Sequence[tuple[str, bytes]], cfg: dict, max_pixels: int = MAX_PIXELS) -> Batch:
    """(name, encoded bytes) items -> decode + preprocess, the same policy as files (servers receive bytes)."""
    return _prepare(list(items), cfg, lambda b: _decode_bytes(b, max_pixels))


class DecodePool:
    """`decode_batch` on `threads` threads at once: the items are split into contiguous slices, one per thread, and
    the slices' batches joined in order, so the result is the batch `decode_batch` returns, bit for bit. Threads,
    not processes: PIL releases the GIL while it decodes and resizes, and a server's items are already in memory
    (a process pool would copy every item twice). A context manager (closes its threads)."""

    def __init__(self, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode") if self.threads > 1 else None

    def decode(self, items: Sequence[tuple[str, bytes]], cfg: dict, max_pixels: int = MAX_PIXELS) -> Batch:
        items = list(items)
        parts = min(self.threads, len(items))
        if self._pool is None or parts < 2:
            return decode_batch(items, cfg, max_pixels)
        step = -(-len(items) // parts)
        slices = [items[i : i + step] for i in range(0, len(items), step)]
        batches = list(self._pool.map(lambda sl: decode_batch(sl, cfg, max_pixels), slices))
        arrays = [b.array for b in batches if len(b.paths)]
        array = np.concatenate(arrays) if arrays else batches[0].array
        return Batch(array, [k for b in batches for k in b.paths], [s for b in batches for s in b.skipped])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_bytes(data, max_pixels: int):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError("<bytes>", f"expected encoded image bytes, got {type(data).__name__}")
    return decode_image(bytes(data), "<bytes>", max_pixels)


@contextlib.contextmanager
def _sigint_ignored():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _worker_init(parent: int) -> None:
    """In each decode worker: die with the parent (Linux: PR_SET_PDEATHSIG; everywhere: a watchdog thread
    that notices the parent is gone), and ignore SIGINT: Ctrl-C is the parent's to handle, so a worker
    never prints a KeyboardInterrupt traceback."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watchdog() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:  # the parent died while this worker was starting, before the signal was armed
        os._exit(1)
    threading.Thread(target=watchdog, daemon=True, name="parent-watchdog").start()


def batches(
    paths: Iterable[str | Path],
    cfg: dict,
    batch_size: int,
    workers: int = 2,
    prefetch: int | None = None,
    max_pixels: int = MAX_PIXELS,
    perturb=None,
) -> Iterator[Batch]:
    """Yield `Batch`es of `batch_size` paths in order; `workers` = 0 decodes in this process; `perturb` (a
    toolkit.perturb.Perturbation) is applied to each decoded image before preprocessing. `paths` is consumed
    lazily: at most `prefetch` batches are read ahead."""
    yield from item_batches(((str(p), str(p)) for p in paths), cfg, batch_size, workers, prefetch, max_pixels, perturb)


def item_batches(
    items: Iterable[tuple[str, str]],
    cfg: dict,
    batch_size: int,
    workers: int = 2,
    prefetch: int | None = None,
    max_pixels: int = MAX_PIXELS,
    perturb=None,
) -> Iterator[Batch]:
    """`batches` over (key, path) items: rows and skipped entries carry the keys."""
    it_items = iter(items)
    chunks = iter(lambda: list(islice(it_items, batch_size)), [])
    if workers <= 0:
        for c in chunks:
            yield load_items(c, cfg, max_pixels, perturb)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    prefetch = prefetch or 2 * workers
    # spawn, not fork: the parent may hold onnxruntime / torch thread pools that fork does not copy safely
    pool = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(os.getpid(),)
    )
    pending: deque = deque()
    try:
        it = chunks
        # workers are started by the first submit; they inherit an ignored SIGINT, so a Ctrl-C while they are
        # still importing (before _worker_init runs) cannot print a KeyboardInterrupt traceback from them
        with _sigint_ignored():
            for c in it:
                pending.append(pool.submit(load_items, c, cfg, max_pixels, perturb))
                if len(pending) >= prefetch:
                    break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load_items, nxt, cfg, max_pixels, perturb))
            yield fut.result()
    finally:  # also on Ctrl-C or an early stop: drop what is queued, wait only for what is running
        pool.shutdown(wait=True, cancel_futures=True)


def sample_labelled(root: str | Path, n: int | None, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """A seeded sample of `n` files of a labelled folder (all when it holds fewer), in folder order, and labels."""
    from toolkit.data.folders import find_labelled_images

    ds = find_labelled_images(root)
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds.paths))[: n or len(ds.paths)])
    return [ds.paths[i] for i in idx], np.array([ds.labels[i] for i in idx])


def load_labelled(
    paths: Sequence[str | Path], labels: np.ndarray, cfg: dict, batch_size: int = 32, workers: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode + preprocess labelled files -> (the batches' arrays, the labels of the readable files, in order);
    an unreadable file drops out with its label (gates and reports judge what the engines saw)."""
    label_of = dict(zip(map(str, paths), labels, strict=True))
    arrays, kept = [], []
    for b in batches(paths, cfg, batch_size, workers):
        if len(b.paths):
            arrays.append(b.array)
            kept += b.paths
    return arrays, np.array([label_of[p] for p in kept])
