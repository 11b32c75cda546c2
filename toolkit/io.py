"""Atomic file output (temp file in the same directory, then rename) and content hashing.

Files are created with the mode the umask gives any new file (0644 under the usual 022), whether written here or
by a library, so an artifact's manifest, reports and ONNX files share one mode. `HASHED` counts the bytes hashed
in this process (benchmarks/artifact_hashing.py reads it: an artifact is verified once per command).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would make this file differ from every other one
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


HASHED = {"bytes": 0, "files": 0}


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_fd(fd: int, chunk: int = 1 << 20) -> str:
    """sha256 of an open file from its start (the caller owns `fd`)."""
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, chunk):
        h.update(block)
        HASHED["bytes"] += len(block)
    HASHED["files"] += 1
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file the user named (their data may be links); inside an artifact use `sha256_inside`."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return sha256_fd(fd, chunk)
    finally:
        os.close(fd)


def sha256_inside(root: str | os.PathLike, name: str, chunk: int = 1 << 20) -> str:
    """sha256 of `root/name`, reached without following any link below `root` (toolkit/safe_paths.py)."""
    from toolkit.safe_paths import open_inside

    fd = open_inside(root, name)
    try:
        return sha256_fd(fd, chunk)
    finally:
        os.close(fd)


def display_path(path: str | os.PathLike) -> str:
    """A file name safe to print anywhere: bytes that are not UTF-8 (surrogate-escaped by Python) shown as \\xNN."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
