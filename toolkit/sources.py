"""What to predict, streamed: a folder (walked), or a file list (text, one path a line; or Parquet with a `path`
column), read lazily in bounded chunks so memory does not grow with the number of inputs.

Every runner keys its rows the same way, computed once here: by the path relative to the folder, or by the path
exactly as the list writes it (`a.png` and `./a.png` are two inputs with two rows; relative list entries are read
relative to the list's own folder). `root` (the resolved folder or list file) is recorded with the output, so the
same source spelled differently resumes and another is refused. A list lets a driver skip walking 10^8 files: the
list is read, nothing is stat'ed. Folders are walked in sorted order, one directory at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")
CHUNK = 8192  # items per chunk: what is held at once while streaming

Item = tuple[str, str]  # (path to read, row key)


@dataclass
class Source:
    root: str  # resolved folder or list file
    kind: str  # folder | list | parquet
    path: Path
    _count: tuple[int, int] | None = field(default=None, repr=False)

    def items(self) -> Iterator[Item]:
        """Every (path, key), streamed; a key listed twice is yielded twice (the runner keeps the first)."""
        if self.kind == "folder":
            yield from _walk(self.path)
        elif self.kind == "list":
            yield from _text_list(self.path)
        else:
            yield from _parquet_list(self.path)

    def chunks(self, size: int = CHUNK) -> Iterator[list[Item]]:
        it = self.items()
        while chunk := list(islice(it, size)):
            yield chunk

    def count(self) -> tuple[int, int]:
        """(inputs, ignored): images and other files of a folder, entries and blank lines of a list. One streaming
        pass (a list is read, a folder walked without stat), cached."""
        if self._count is None:
            if self.kind == "folder":
                from toolkit.data.images import is_image_file

                n = other = 0
                for _dirpath, dirnames, filenames in os.walk(self.path):
                    dirnames.sort()
                    for name in filenames:
                        if is_image_file(Path(name)):
                            n += 1
                        else:
                            other += 1
                self._count = (n, other)
            elif self.kind == "list":
                n = blank = 0
                for line in _lines(self.path):
                    if line.strip():
                        n += 1
                    else:
                        blank += 1
                self._count = (n, blank)
            else:
                import pyarrow.parquet as pq

                self._count = (pq.ParquetFile(self.path).metadata.num_rows, 0)
        return self._count

    def __len__(self) -> int:
        return self.count()[0]

    @property
    def ignored(self) -> int:
        return self.count()[1]


def open_source(source: str | os.PathLike) -> Source:
    p = Path(source)
    if p.is_dir():
        return Source(str(p.resolve()), "folder", p)
    if not p.exists():
        raise FileNotFoundError(f"{source} does not exist (a folder of images, or a .txt / .parquet file list)")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        _check_parquet(p)
        return Source(str(p.resolve()), "parquet", p)
    if suffix in LIST_SUFFIXES:
        return Source(str(p.resolve()), "list", p)
    raise ValueError(f"{source}: not a folder, a text file list ({', '.join(LIST_SUFFIXES)}) or a .parquet list")


def _walk(root: Path) -> Iterator[Item]:
    from toolkit.data.images import is_image_file

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            f = os.path.join(dirpath, name)
            if is_image_file(Path(name)):
                yield f, Path(os.path.relpath(f, root)).as_posix()


def _lines(p: Path) -> Iterator[str]:
    with open(p, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for line in f:
            yield line.rstrip("\n").rstrip("\r")


def _text_list(p: Path) -> Iterator[Item]:
    base = str(p.resolve().parent).rstrip("/") + "/"  # os.path.join(base, key) without its per-call cost
    for key in _lines(p):
        if key.strip():
            yield (key if key.startswith("/") else base + key), key


def _check_parquet(p: Path) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("a .parquet file list needs pyarrow (pip install 'causal-deploy-toolkit[ray]')") from None
    try:
        schema = pq.ParquetFile(p).schema_arrow
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a readable Parquet file ({e})") from None
    if "path" not in schema.names:
        raise ValueError(f"{p}: a Parquet file list needs a string column 'path' (it has {', '.join(schema.names)})")


def _parquet_list(p: Path, batch: int = CHUNK) -> Iterator[Item]:
    import pyarrow.parquet as pq

    base = p.resolve().parent
    for rb in pq.ParquetFile(p).iter_batches(batch_size=batch, columns=["path"]):
        for x in rb.column(0).to_pylist():
            if x is None:
                continue
            key = os.fsdecode(x) if isinstance(x, bytes) else str(x)
            if key.strip():
                yield (key if os.path.isabs(key) else os.path.join(base, key)), key
