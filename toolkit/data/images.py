"""Robust image decoding: every failure becomes an `ImageDecodeError` naming the file and the reason.

Policy (shared by training, evaluation and `toolkit infer`): EXIF orientation applied, first frame of
animations, 16-bit and float images scaled to 8 bit, palette / alpha / CMYK handled by PIL's RGB
conversion in preprocessing, decompression bombs refused by a pixel limit.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)
# Default cap on decoded pixels (PIL's own default warns at ~89 MP and errors at twice that).
MAX_PIXELS = 64 * 1024 * 1024
# Default cap on a file's size, checked before reading it (a 64 MP PNG of noise is ~200 MB; JPEGs far less).
MAX_FILE_BYTES = 256 * 1024 * 1024


# warnings.catch_warnings swaps the process's global filter list and restores it on exit: two threads decoding at
# once (toolkit.data.loader.DecodePool) restored each other's lists, and a filter leaked (measured: 9 filters
# before 2,000 threaded decodes, 10 after). Only opening (header and checks) holds it.
_OPEN_LOCK = threading.Lock()
# formats whose load() makes no decompression-bomb check of its own (Pillow 13: only open() does; WebP: error only)
_LOADS_WITHOUT_BOMB_CHECK = frozenset({"JPEG", "PNG", "WEBP", "BMP", "PPM"})


class ImageDecodeError(Exception):
    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, path: str | Path = "<bytes>", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes into a fully loaded PIL image (mode kept, except 16-bit/float -> 8-bit)."""
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():  # the header, where PIL's bomb check warns
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(path, f"invalid dimensions {w}x{h}")
            if w * h > max_pixels:
                raise ImageDecodeError(path, f"too large: {w}x{h} pixels exceeds the limit of {max_pixels}")
            img.seek(0)  # first frame of animated GIF / WebP / multi-page TIFF
            if img.format not in _LOADS_WITHOUT_BOMB_CHECK:
                img.load()  # TIFF tiles, GIF frames...: PIL checks sizes again while loading
        img.load()  # JPEG, PNG, WebP...: decoded outside the lock (PIL releases the GIL: threads decode at once)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not a recognised image format") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageDecodeError(path, f"decompression bomb refused ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(path, f"corrupt or truncated image ({e})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose an otherwise readable image
        img = ImageOps.exif_transpose(img)
    return _to_8bit(img)


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)
        peak = 65535 if img.mode.startswith("I;16") or a.max() > 255 else 255
        return Image.fromarray((np.clip(a, 0, peak) * 255 // peak).astype(np.uint8), mode="L")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        scaled = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), mode="L")
    return img


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    return decode_image(read_file(path, max_bytes), path, max_pixels)


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}  # fmt: skip


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else (FIFO, device, socket, too big) is an
    ImageDecodeError. Opened non-blocking and checked with fstat, so a FIFO or a device swapped in between
    listing and reading never blocks or streams (a symlink to /dev/zero named x.png is refused, not read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise ImageDecodeError(path, f"not a regular file ({what})")
        if st.st_size > max_bytes:
            raise ImageDecodeError(path, f"file too large: {st.st_size} bytes exceeds the limit of {max_bytes}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew while being read
            raise ImageDecodeError(path, f"file too large: more than {max_bytes} bytes")
        return data
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from None
    finally:
        os.close(fd)
