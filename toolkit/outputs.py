"""The output contract every runner keeps: one row per readable input, unreadable inputs listed with a reason,
resumable after any kill, and one writer at a time.

- An exclusive lock (`<out>.lock`, flock) refuses a second run on the same output at once; the kernel
  drops it when the holder dies, so a killed run never blocks the next one.
- `<out>.meta.json` records what produced the rows (artifact hashes, engine, precision, threshold, the
  input root) and how many bytes of each file are committed. Rows are appended one batch at a time and
  fsync'ed, then the committed sizes are advanced; a restart cuts both files back to them, so a kill at any
  byte (also inside a quoted CSV field holding a newline) leaves no partial row.
- Rows are keyed by the input's path relative to the root; the same root spelled differently resumes,
  another root is refused. Any name the OS can hold is written losslessly: JSON lines escape bytes that
  are not UTF-8 as `\\udcXX` (json.loads returns the same str, `os.fsencode` the original bytes); CSV
  writes the name's own bytes (Python's surrogateescape: the file is the names as `ls` prints them, so a
  CSV reader needs `encoding_errors="surrogateescape"` for such names; use .jsonl for strict UTF-8).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.images import Skipped
from toolkit.io import display_path, read_json, write_json
from toolkit.locks import OutputLocked, exclusive_lock
from toolkit.safe_paths import is_regular_file, nofollow_opener, open_nofollow

__all__ = ["OutputLocked", "OutputPaths", "PartitionedLog", "PredictionLog", "ResumeError", "exclusive_lock",
           "open_log", "write_skipped_csv"]  # fmt: skip

META_VERSION = "causal-deploy-toolkit/predictions@2"


class ResumeError(ValueError):
    pass


@dataclass(frozen=True)
class OutputPaths:
    predictions: Path
    skipped: Path
    meta: Path
    summary: Path
    lock: Path
    fmt: str  # csv | jsonl

    @classmethod
    def for_file(cls, out: str | os.PathLike) -> OutputPaths:
        out = Path(out)
        fmt = {".csv": "csv", ".jsonl": "jsonl"}.get(out.suffix.lower())
        if fmt is None:
            raise ValueError(f"{out}: predictions file must end in .csv or .jsonl")
        if out.is_dir():
            raise ValueError(f"{out} is a directory: --out names the predictions file (.csv or .jsonl)")
        stem = out.with_name(out.stem)
        return cls(
            out,
            Path(f"{stem}.skipped.csv"),
            Path(f"{stem}.meta.json"),
            Path(f"{stem}.summary.json"),
            Path(f"{stem}.lock"),
            fmt,
        )


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("identity", "detector", "purifier"):
            out.update(_flat(v, "" if k == "identity" else f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _encode_rows(rows: list[dict], columns: tuple[str, ...], fmt: str) -> bytes:
    buf = io.StringIO()
    if fmt == "csv":
        csv.DictWriter(buf, fieldnames=columns, lineterminator="\n").writerows(rows)
    else:
        buf.writelines(json.dumps({c: r[c] for c in columns}, ensure_ascii=True) + "\n" for r in rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _skipped_records(skipped: list[Skipped]) -> list[dict]:
    return [{"path": x.path, "reason": x.reason} for x in skipped]


def _read_keys(path: Path, fmt: str, size: int) -> list[str]:
    if size == 0 or not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        text = f.read()
    if fmt == "jsonl":
        return [json.loads(line)["path"] for line in text.splitlines() if line.strip()]
    return [row["path"] for row in csv.DictReader(io.StringIO(text, newline=""))]


class PredictionLog:
    """The rows and skipped files of one output, resumable; use as a context manager (takes the lock)."""

    SKIPPED_COLUMNS = ("path", "reason")

    def __init__(self, out: str | os.PathLike, columns: tuple[str, ...], identity: dict, root: str, overwrite=False):
        self.paths = OutputPaths.for_file(out)
        self.columns, self.identity, self.root, self.overwrite = list(columns), identity, root, overwrite
        self._lock = exclusive_lock(self.paths.lock, str(self.paths.predictions))
        self.done: set[str] = set()
        self.n_rows = self.n_skipped = 0

    def __enter__(self) -> PredictionLog:
        self._lock.__enter__()
        try:
            self._open()
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for f in (getattr(self, "_preds", None), getattr(self, "_skips", None)):
            if f is not None:
                f.close()
        self._lock.__exit__()

    def _open(self) -> None:
        p = self.paths
        if self.overwrite:
            for f in (p.predictions, p.skipped, p.meta, p.summary):
                f.unlink(missing_ok=True)  # a link is removed, never followed
        for f in (p.predictions, p.skipped, p.meta, p.summary):
            is_regular_file(f)  # a link planted at a side file is refused, naming it
        committed = {"predictions": 0, "skipped": 0}
        if is_regular_file(p.meta):
            old = read_json(p.meta)
            if not isinstance(old, dict) or old.get("format") != META_VERSION:
                raise ResumeError(f"{p.meta} was written by another version of the toolkit; use --overwrite")
            diff = [k for k in ("identity", "root", "columns") if old.get(k) != getattr(self, k)]
            if diff:
                raise ResumeError(self._mismatch(old, diff))
            committed = old["committed"]
        elif any(is_regular_file(f) and f.stat().st_size > 0 for f in (p.predictions, p.skipped)):
            raise ResumeError(
                f"{p.predictions} exists but has no {p.meta.name}: not written by 'toolkit infer'; use --overwrite"
            )
        for f, key in ((p.predictions, "predictions"), (p.skipped, "skipped")):
            size = f.stat().st_size if is_regular_file(f) else 0
            if size < committed[key]:
                raise ResumeError(f"{f} is shorter than {p.meta.name} records: it was changed; use --overwrite")
            if size > committed[key]:  # a batch that was being written when the run stopped
                fd = open_nofollow(f, os.O_RDWR)
                os.ftruncate(fd, committed[key])
                os.close(fd)
        self._preds = open(p.predictions, "ab", opener=nofollow_opener)  # noqa: SIM115 - closed in __exit__
        self._skips = open(p.skipped, "ab", opener=nofollow_opener)  # noqa: SIM115
        if committed["predictions"] == 0 and p.fmt == "csv":
            self._write(self._preds, (",".join(self.columns) + "\n").encode())
        if committed["skipped"] == 0:
            self._write(self._skips, (",".join(self.SKIPPED_COLUMNS) + "\n").encode())
        self._commit()
        rows = _read_keys(p.predictions, p.fmt, self._preds.tell())
        skipped = _read_keys(p.skipped, "csv", self._skips.tell())
        self.n_rows, self.n_skipped = len(rows), len(skipped)
        self.done = set(rows) | set(skipped)

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

    @staticmethod
    def _write(f, data: bytes) -> None:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    def _commit(self) -> None:
        write_json(
            self.paths.meta,
            {
                "format": META_VERSION,
                "identity": self.identity,
                "root": self.root,
                "columns": self.columns,
                "committed": {"predictions": self._preds.tell(), "skipped": self._skips.tell()},
            },
        )

    def append(self, rows: list[dict], skipped: list[Skipped]) -> None:
        """One batch: rows and skipped inputs (key + reason), each file fsync'ed, then committed."""
        if not rows and not skipped:
            return
        if rows:
            self._write(self._preds, _encode_rows(rows, self.columns, self.paths.fmt))
        if skipped:
            self._write(self._skips, _encode_rows(_skipped_records(skipped), self.SKIPPED_COLUMNS, "csv"))
        self._commit()
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)
        self.done.update(r["path"] for r in rows)
        self.done.update(x.path for x in skipped)


def write_skipped_csv(path: str | os.PathLike, skipped: list[Skipped]) -> Path:
    """The one way a skipped list is written outside a PredictionLog (training, eval, purify): csv module, atomic."""
    from toolkit.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(
            b"path,reason\n" + _encode_rows(_skipped_records(skipped), PredictionLog.SKIPPED_COLUMNS, "csv")
        )
    return Path(path)


class PartitionedLog:
    """The same contract for very large runs: `--out DIR/` holds Parquet parts and `_manifest.json`.
    Columns: those of the CSV (`path` printable) and `path_bytes`, the file name's exact bytes.

    Rows (and skipped inputs) are buffered and written as `part-NNNNNN.parquet` (`skipped-NNNNNN.parquet`)
    files, each written atomically; a part counts only once `_manifest.json` lists it (rewritten atomically
    after the part), so a killed driver leaves at most unlisted parts, which the next run deletes. Resume reads
    the keys of the listed parts. Needs pyarrow (the `ray` extra)."""

    MANIFEST = "_manifest.json"

    def __init__(self, out: str | os.PathLike, columns, identity: dict, root: str, overwrite=False,
                 flush_rows: int = 50_000):  # fmt: skip
        self.dir = Path(out)
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"{out} is a file: a partitioned output is a directory (or use .csv / .jsonl)")
        self.columns, self.identity, self.root, self.overwrite = list(columns), identity, root, overwrite
        self.flush_rows = flush_rows
        self._lock = exclusive_lock(self.dir / ".lock", str(self.dir))
        self.done: set[str] = set()
        self.n_rows = self.n_skipped = 0
        self._rows: list[dict] = []
        self._skips: list[Skipped] = []

    @property
    def paths(self):
        return self

    @property
    def predictions(self) -> Path:
        return self.dir

    @property
    def summary(self) -> Path:
        return self.dir / "_summary.json"

    @property
    def skipped(self) -> Path:
        return self.dir

    def __enter__(self) -> PartitionedLog:
        import pyarrow.parquet as pq

        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            m = self.dir / self.MANIFEST
            if self.overwrite:
                for f in self.dir.glob("*.parquet"):
                    f.unlink()
                m.unlink(missing_ok=True)
            self.state = {"format": META_VERSION, "identity": self.identity, "root": self.root,
                          "columns": self.columns, "parts": [], "skipped_parts": []}  # fmt: skip
            if m.is_file():
                old = read_json(m)
                diff = [k for k in ("identity", "root", "columns") if old.get(k) != self.state[k]]
                if old.get("format") != META_VERSION or diff:
                    raise ResumeError(
                        f"{self.dir} holds predictions written with another {', '.join(diff) or 'toolkit version'}; "
                        "use another --out, or --overwrite to start again"
                    )
                self.state = old
            elif any(self.dir.glob("*.parquet")):
                raise ResumeError(f"{self.dir} holds Parquet files but no {self.MANIFEST}; use --overwrite")
            listed = set(self.state["parts"]) | set(self.state["skipped_parts"])
            for f in self.dir.glob("*.parquet"):  # written by a run killed before it committed them
                if f.name not in listed:
                    f.unlink()
            for name in self.state["parts"] + self.state["skipped_parts"]:
                raw = pq.read_table(self.dir / name, columns=["path_bytes"]).column("path_bytes").to_pylist()
                self.done.update(os.fsdecode(b) for b in raw)
                if name.startswith("part-"):
                    self.n_rows += len(raw)
                else:
                    self.n_skipped += len(raw)
            write_json(m, self.state)
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None or issubclass(exc[0], KeyboardInterrupt):
                self.flush()  # what was predicted before Ctrl-C is kept
        finally:
            self._lock.__exit__()

    def append(self, rows: list[dict], skipped: list[Skipped]) -> None:
        self._rows += rows
        self._skips += skipped
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)
        self.done.update(r["path"] for r in rows)
        self.done.update(x.path for x in skipped)
        if len(self._rows) + len(self._skips) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from toolkit.io import atomic_path

        def write(kind: str, records: list[dict], columns: list[str]) -> str:
            name = f"{kind}-{len(self.state['parts']) + len(self.state['skipped_parts']):06d}.parquet"
            # Parquet strings are UTF-8: `path` is the printable name, `path_bytes` the exact one (any bytes)
            cols = {c: pa.array([display_path(r[c]) if c == "path" else r[c] for r in records], pa.string())
                    for c in columns}  # fmt: skip
            cols["path_bytes"] = pa.array([os.fsencode(r["path"]) for r in records], pa.binary())
            table = pa.table(cols)
            with atomic_path(self.dir / name) as tmp:
                pq.write_table(table, tmp)
            return name

        if self._rows:
            self.state["parts"].append(write("part", self._rows, self.columns))
        if self._skips:
            recs = _skipped_records(self._skips)
            self.state["skipped_parts"].append(write("skipped", recs, list(PredictionLog.SKIPPED_COLUMNS)))
        if self._rows or self._skips:
            write_json(self.dir / self.MANIFEST, self.state)  # the commit point
        self._rows, self._skips = [], []


def open_log(out: str | os.PathLike, columns, identity: dict, root: str, overwrite: bool = False):
    """A `PredictionLog` for a .csv / .jsonl file, a `PartitionedLog` for a directory (no such suffix)."""
    if Path(out).suffix.lower() in (".csv", ".jsonl"):
        return PredictionLog(out, columns, identity, root, overwrite)
    if Path(out).suffix:
        raise ValueError(f"{out}: predictions go to a .csv or .jsonl file, or a directory of Parquet parts")
    return PartitionedLog(out, columns, identity, root, overwrite)
