"""What to predict: a folder (walked), or a file list (text, one path a line; or Parquet with a `path` column).

Every runner keys its rows the same way: by the path relative to the folder, or by the path as the list
writes it (relative list entries are read relative to the list's own folder). `root` (the resolved folder
or list file) is recorded with the output, so the same source spelled differently resumes and another is
refused. A list lets a driver skip walking 10^8 files: the list is read, nothing is stat'ed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class Source:
    root: str  # resolved folder or list file
    items: list[tuple[str, str]]  # (path to read, row key)
    ignored: int = 0  # folder: non-image files; list: blank lines
    kind: str = "folder"  # folder | list

    def __len__(self) -> int:
        return len(self.items)


def open_source(source: str | os.PathLike) -> Source:
    from toolkit.data.loader import discover_images

    p = Path(source)
    if p.is_dir():
        images, other = discover_images(p)
        root = str(p.resolve())
        return Source(root, [(str(f), Path(os.path.relpath(f, p)).as_posix()) for f in images], len(other))
    if not p.exists():
        raise FileNotFoundError(f"{source} does not exist (a folder of images, or a .txt / .parquet file list)")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        entries = _parquet_paths(p)
    elif suffix in LIST_SUFFIXES:
        with open(p, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            entries = [line.rstrip("\n").rstrip("\r") for line in f]
    else:
        raise ValueError(f"{source}: not a folder, a text file list ({', '.join(LIST_SUFFIXES)}) or a .parquet list")
    base = p.resolve().parent
    keys = [e for e in entries if e.strip()]
    items = [(k if os.path.isabs(k) else str(base / k), k) for k in dict.fromkeys(keys)]
    return Source(str(p.resolve()), items, len(entries) - len(keys), "list")


def _parquet_paths(p: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("a .parquet file list needs pyarrow (pip install 'causal-deploy-toolkit[ray]')") from None
    try:
        table = pq.read_table(p, columns=["path"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{p}: a Parquet file list needs a string column 'path' ({e})") from None
    except OSError as e:
        raise ValueError(f"{p}: not a readable Parquet file ({e})") from None
    return [str(x) for x in table.column("path").to_pylist() if x is not None]
