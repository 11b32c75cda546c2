"""The output contract of every runner, for a `.csv` / `.jsonl` file: one row per readable input, unreadable
inputs listed with a reason, resumable after any kill, one writer at a time, memory flat in the number of inputs.

Side files are named from the whole output name (`preds.csv` -> `preds.csv.meta.json`, `.skipped.csv`,
`.summary.json`, `.lock`, `.done.sqlite`), so `x.csv` and `x.jsonl` never share one. They are opened without
following links (toolkit/safe_paths.py).
- Commit: rows are written as they come, then at most every `commit_s` seconds or `commit_rows` rows both files
  are fsync'ed and `<out>.meta.json` records the committed sizes and counts (atomically); then the keys go to
  the done index (toolkit/done_index.py). A restart cuts both files back to the committed sizes, so a kill at
  any byte (also inside a quoted CSV field holding a newline) leaves no partial row; at most one commit interval
  of work is redone.
- Resume: keys already done are looked up in the index, never loaded; `source_prefix` in the meta records how
  many source items (and the digest of their keys) were all committed, so a resume skips them without lookups
  once it has checked the source still starts the same way.
- Names: any name the OS can hold is written losslessly: JSON lines escape bytes that are not UTF-8 as `\\udcXX`;
  CSV writes the name's own bytes (read it with `encoding_errors="surrogateescape"`).
Errors name the file they happened on (disk full included).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.images import Skipped
from toolkit.done_index import DoneIndex
from toolkit.io import display_path, write_json
from toolkit.locks import OutputLocked, exclusive_lock
from toolkit.safe_paths import is_regular_file, nofollow_opener, open_nofollow

__all__ = ["META_VERSION", "OutputLocked", "OutputPaths", "PredictionLog", "ResumeError", "SourceTracker",
           "Todo", "write_skipped_csv"]  # fmt: skip

META_VERSION = "causal-deploy-toolkit/predictions@3"  # @3: side files from the full name, done index, counts
SKIPPED_COLUMNS = ("path", "reason")


class ResumeError(ValueError):
    pass


@dataclass(frozen=True)
class OutputPaths:
    predictions: Path
    skipped: Path
    meta: Path
    summary: Path
    lock: Path
    index: Path
    work: Path  # scratch directory of a run (the Ray runner's list of what is left)
    fmt: str  # csv | jsonl

    @classmethod
    def for_file(cls, out: str | os.PathLike) -> OutputPaths:
        out = Path(out)
        fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
        if fmt is None:
            raise ValueError(f"{out}: predictions file must end in .csv or .jsonl")
        if out.is_dir():
            raise ValueError(f"{out} is a directory: --out names the predictions file (.csv or .jsonl)")
        side = lambda s: out.with_name(f"{out.name}.{s}")  # noqa: E731
        return cls(out, side("skipped.csv"), side("meta.json"), side("summary.json"), side("lock"),
                   side("done.sqlite"), side("work"), fmt)  # fmt: skip

    def legacy_meta(self) -> Path:
        """Where toolkit versions before predictions@3 kept the meta (<stem>.meta.json, shared by .csv / .jsonl)."""
        return self.predictions.with_name(f"{self.predictions.stem}.meta.json")


def encode_rows(rows: list[dict], columns: tuple[str, ...], fmt: str) -> bytes:
    buf = io.StringIO()
    if fmt == "csv":
        csv.writer(buf, lineterminator="\n").writerows([r[c] for c in columns] for r in rows)
    else:
        buf.writelines(json.dumps({c: r[c] for c in columns}, ensure_ascii=True) + "\n" for r in rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def skipped_records(skipped: list[Skipped]) -> list[dict]:
    return [{"path": x.path, "reason": x.reason} for x in skipped]


class _Range(io.RawIOBase):
    """The bytes of an open file from its position, up to `n` of them."""

    def __init__(self, f, n: int):
        self.f, self.left = f, n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        n = self.f.readinto(memoryview(b)[: min(len(b), self.left)])
        self.left -= n
        return n


def read_keys(path: Path, fmt: str, start: int, end: int, columns: tuple[str, ...] = ("path",)) -> Iterator[str]:
    """The `path` column of the rows between byte offsets `start` (0: the file's start, with its CSV header) and
    `end` (both row boundaries), streamed."""
    if end <= start:
        return
    with open(path, "rb") as fb:
        fb.seek(start)
        text = io.TextIOWrapper(io.BufferedReader(_Range(fb, end - start)), encoding="utf-8",
                                errors="surrogateescape", newline="")  # fmt: skip
        if fmt == "jsonl":
            for line in text:
                if line.strip():
                    yield json.loads(line)["path"]
            return
        reader = csv.reader(text)
        if start == 0:
            header = next(reader, None) or ["path"]
            col = header.index("path")
        else:
            col = list(columns).index("path")
        for row in reader:
            yield row[col]


class Todo(tuple):
    """(path, key, chunk): an input to predict and the source chunk it came from."""

    __slots__ = ()

    def __new__(cls, path: str, key: str, chunk: int):
        return tuple.__new__(cls, (path, key, chunk))

    path = property(lambda s: s[0])
    key = property(lambda s: s[1])
    chunk = property(lambda s: s[2])


class SourceTracker:
    """Which source chunks are wholly committed, in order: the prefix a resume can skip without lookups."""

    def __init__(self):
        self.remaining: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.digests: dict[int, str] = {}  # sha256 of every key up to the end of the chunk
        self.next_chunk = 0
        self.prefix = {"items": 0, "sha256": hashlib.sha256().hexdigest()}

    def opened(self, chunk: int, n_items: int, n_todo: int, digest: str) -> None:
        self.remaining[chunk], self.sizes[chunk], self.digests[chunk] = n_todo, n_items, digest
        self._advance()

    def committed(self, chunks: list[int]) -> None:
        for c in chunks:
            self.remaining[c] -= 1
        self._advance()

    def _advance(self) -> None:
        while self.remaining.get(self.next_chunk) == 0:
            c = self.next_chunk
            self.prefix = {"items": self.prefix["items"] + self.sizes.pop(c), "sha256": self.digests.pop(c)}
            del self.remaining[c]
            self.next_chunk += 1


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape") + b"\0"


class ResumableOutput:
    """What every output kind shares: the lock, the done index, the source tracker and the todo filter."""

    def __init__(self, identity: dict, root: str, columns, overwrite: bool, index_path: Path):
        self.identity, self.root, self.columns, self.overwrite = identity, root, list(columns), overwrite
        self.index = DoneIndex(index_path)
        self.tracker = SourceTracker()
        self.n_rows = self.n_skipped = 0
        self._resume_prefix: dict | None = None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.commit()  # what was predicted before an error or Ctrl-C is kept
        except OSError:
            if exc_type is None:
                raise
        finally:
            self._close_files()
            self._lock.__exit__()

    def commit(self) -> None:
        raise NotImplementedError

    def _close_files(self) -> None:
        self.index.close()

    def todo(self, src, chunk_size: int | None = None) -> Iterator[list[Todo]]:
        """The source's chunks without the keys already committed or already taken by this run."""
        from toolkit.sources import CHUNK

        skip = self._verified_prefix(src)
        self.index.start(len(src))
        h = hashlib.sha256()
        n_seen = 0
        for i, chunk in enumerate(src.chunks(chunk_size or CHUNK)):
            for _, key in chunk:
                h.update(_key_bytes(key))
            n_seen += len(chunk)
            if n_seen <= skip:  # wholly inside the prefix committed before: no lookups
                self.tracker.opened(i, len(chunk), 0, h.hexdigest())
                continue
            new = self.index.claim([k for _, k in chunk])
            todo = [Todo(p, k, i) for (p, k), n in zip(chunk, new, strict=True) if n]
            self.tracker.opened(i, len(chunk), len(todo), h.hexdigest())
            if todo:
                yield todo

    def _verified_prefix(self, src) -> int:
        """How many leading source items a resume may skip: the committed prefix, if the source still starts with
        exactly those keys (one streaming pass over them)."""
        prefix = self._resume_prefix
        if not prefix or not prefix.get("items"):
            return 0
        h, n = hashlib.sha256(), 0
        for _, key in src.items():
            if n == prefix["items"]:
                break
            h.update(_key_bytes(key))
            n += 1
        return n if n == prefix["items"] and h.hexdigest() == prefix["sha256"] else 0


class PredictionLog(ResumableOutput):
    """The rows and skipped inputs of one .csv / .jsonl output; a context manager (takes the lock)."""

    SKIPPED_COLUMNS = SKIPPED_COLUMNS

    def __init__(self, out: str | os.PathLike, columns: tuple[str, ...], identity: dict, root: str,
                 overwrite: bool = False, commit_rows: int = 8192, commit_s: float = 1.0):  # fmt: skip
        self.paths = OutputPaths.for_file(out)
        super().__init__(identity, root, columns, overwrite, self.paths.index)
        self.commit_rows, self.commit_s = commit_rows, commit_s
        self._lock = exclusive_lock(self.paths.lock, str(self.paths.predictions))
        self._files: dict[str, tuple] = {}
        self._pending: list[str] = []
        self._pending_chunks: list[int] = []
        self._last_commit = time.monotonic()

    # ---- opening -------------------------------------------------------------------------------------------
    def __enter__(self) -> PredictionLog:
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._close_files()
            self._lock.__exit__()
            raise
        return self

    def _close_files(self) -> None:
        for f, _, _ in self._files.values():
            f.close()
        self._files = {}
        self.index.close()

    def _open(self) -> None:
        p = self.paths
        for f in (p.predictions, p.skipped, p.meta, p.summary, p.index):
            is_regular_file(f)  # a link planted at a side file is refused, naming it
        if self.overwrite:
            for f in (p.predictions, p.skipped, p.meta, p.summary, p.index):
                f.unlink(missing_ok=True)  # a link is removed, never followed
            for suffix in ("-wal", "-shm"):
                Path(f"{p.index}{suffix}").unlink(missing_ok=True)
        committed, counts = {"predictions": 0, "skipped": 0}, {"rows": 0, "skipped": 0}
        if is_regular_file(p.meta):
            old = _read_meta(p.meta)
            if old.get("format") != META_VERSION:
                raise ResumeError(f"{p.meta} was written by another version of the toolkit; use --overwrite")
            diff = [k for k in ("identity", "root", "columns") if old.get(k) != getattr(self, k)]
            if diff:
                raise ResumeError(self._mismatch(old, diff))
            committed, counts = old["committed"], old["counts"]
            self._resume_prefix = old.get("source_prefix")
        elif any(is_regular_file(f) and f.stat().st_size > 0 for f in (p.predictions, p.skipped)):
            legacy = p.legacy_meta()
            if is_regular_file(legacy):
                raise ResumeError(
                    f"{p.predictions} was written by an earlier toolkit (its side files are named from the stem, "
                    f"{legacy.name}; now {p.meta.name}): finish it with that version, or use --overwrite"
                )
            raise ResumeError(
                f"{p.predictions} exists but has no {p.meta.name}: not written by 'toolkit infer'; use --overwrite"
            )
        for key, f in (("predictions", p.predictions), ("skipped", p.skipped)):
            size = f.stat().st_size if is_regular_file(f) else 0
            if size < committed[key]:
                raise ResumeError(f"{f} is shorter than {p.meta.name} records: it was changed; use --overwrite")
            if size > committed[key]:  # rows written after the last commit when the run stopped
                fd = open_nofollow(f, os.O_RDWR)
                os.ftruncate(fd, committed[key])
                os.close(fd)
            self._files[key] = (open(f, "ab", buffering=0, opener=nofollow_opener), f, committed[key])  # noqa: SIM115
        fresh = committed["skipped"] == 0
        if committed["predictions"] == 0 and p.fmt == "csv":
            self._write("predictions", (",".join(self.columns) + "\n").encode())
        if fresh:
            self._write("skipped", (",".join(SKIPPED_COLUMNS) + "\n").encode())
        self.n_rows, self.n_skipped = counts["rows"], counts["skipped"]
        if fresh:
            self._commit_files()
        self._open_index(committed)

    def _open_index(self, committed: dict) -> None:
        upto = self.index.open()
        if upto is not None and all(upto.get(k, 0) <= committed[k] for k in committed):
            start = upto
        else:  # missing, unreadable or ahead of the output (cannot happen by the commit order): rebuilt
            self.index.reset()
            start = {k: 0 for k in committed}
        if start == self._sizes():
            return
        keys: list[str] = []
        for key, fmt in (("predictions", self.paths.fmt), ("skipped", "csv")):
            f = self._files[key][1]
            cols = tuple(self.columns) if key == "predictions" else SKIPPED_COLUMNS
            for k in read_keys(f, fmt, start[key], self._sizes()[key], cols):
                keys.append(k)
                if len(keys) >= 100_000:
                    self.index.add(keys, start)
                    keys = []
        self.index.add(keys, self._sizes())

    def _mismatch(self, old: dict, diff: list[str]) -> str:
        p = self.paths.predictions
        if diff == ["root"]:
            return (
                f"{p} holds predictions for {display_path(old['root'])}, not {display_path(self.root)}; "
                "use another --out, or --overwrite to start again"
            )
        was, now = _flat({k: old.get(k) for k in diff}), _flat({k: getattr(self, k) for k in diff})
        changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
        return (
            f"{p} was written with a different {', '.join(changed)} "
            f"(was {', '.join(f'{k}={was.get(k)}' for k in changed)}); use another --out, or --overwrite to start again"
        )

    # ---- writing ------------------------------------------------------------------------------------------------
    def _sizes(self) -> dict[str, int]:
        return {k: v[2] for k, v in self._files.items()}

    def _write(self, which: str, data: bytes) -> None:
        f, path, size = self._files[which]
        view = memoryview(data)
        try:
            while view:
                n = f.write(view)
                view = view[n:]
        except OSError as e:  # the file may hold part of the data: the tracked size keeps it out of a commit
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        self._files[which] = (f, path, size + len(data))

    def append(self, rows: list[dict], skipped: list[Skipped], chunks: list[int] | None = None) -> None:
        """One batch: rows and skipped inputs (key + reason); `chunks`: the source chunk of each (rows first)."""
        if not rows and not skipped:
            return
        before = dict(self._files)
        try:
            if rows:
                self._write("predictions", encode_rows(rows, tuple(self.columns), self.paths.fmt))
            if skipped:
                self._write("skipped", encode_rows(skipped_records(skipped), SKIPPED_COLUMNS, "csv"))
        except OSError:
            self._files = before  # this batch is not committed; what came before it is (on exit)
            raise
        self._pending += [r["path"] for r in rows] + [x.path for x in skipped]
        self._pending_chunks += chunks or []
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)
        if len(self._pending) >= self.commit_rows or time.monotonic() - self._last_commit >= self.commit_s:
            self.commit()

    def _commit_files(self) -> None:
        for f, path, size in self._files.values():
            try:
                if os.fstat(f.fileno()).st_size > size:
                    os.ftruncate(f.fileno(), size)
                os.fsync(f.fileno())
            except OSError as e:
                raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        write_json(self.paths.meta, {
            "format": META_VERSION, "identity": self.identity, "root": self.root, "columns": self.columns,
            "committed": self._sizes(), "counts": {"rows": self.n_rows, "skipped": self.n_skipped},
            "source_prefix": self.tracker.prefix,
        })  # fmt: skip

    def commit(self) -> None:
        """Make everything appended so far durable, then index its keys."""
        if not self._files:
            return
        self.tracker.committed(self._pending_chunks)
        self._commit_files()
        self.index.add(self._pending, self._sizes())
        self._pending, self._pending_chunks = [], []
        self._last_commit = time.monotonic()


def _read_meta(path: Path) -> dict:
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path} is not valid JSON ({e}); use --overwrite") from None
    if not isinstance(m, dict):
        raise ResumeError(f"{path} is not a predictions record; use --overwrite")
    return m


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("identity", "detector", "purifier"):
            out.update(_flat(v, "" if k == "identity" else f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_skipped_csv(path: str | os.PathLike, skipped: list[Skipped]) -> Path:
    """The one way a skipped list is written outside a PredictionLog (training, eval, purify): csv module, atomic."""
    from toolkit.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(b"path,reason\n" + encode_rows(skipped_records(skipped), SKIPPED_COLUMNS, "csv"))
    return Path(path)
