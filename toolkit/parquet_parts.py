"""The output contract for very large runs: `--out DIR/` holds Parquet parts and `_manifest.json`.

Columns: those of the CSV (`path` printable) and `path_bytes`, the file name's exact bytes. Rows (and skipped
inputs) are buffered and written as `part-NNNNNN.parquet` (`skipped-NNNNNN.parquet`) files, each written
atomically, every `flush_rows` rows or `flush_s` seconds; a part counts only once `_manifest.json` lists it
(rewritten atomically after the part), so a killed driver leaves at most unlisted parts, which the next run
deletes. Keys already done are in `_done.sqlite` (toolkit/done_index.py), never loaded; the lock is `.lock`.
Needs pyarrow (the `ray` extra).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from toolkit.data.images import Skipped
from toolkit.io import display_path, write_json
from toolkit.locks import exclusive_lock
from toolkit.row_log import META_VERSION, SKIPPED_COLUMNS, ResumableOutput, ResumeError, _read_meta, skipped_records
from toolkit.safe_paths import check_not_link, is_regular_file


class PartitionedLog(ResumableOutput):
    MANIFEST = "_manifest.json"

    def __init__(self, out: str | os.PathLike, columns, identity: dict, root: str, overwrite: bool = False,
                 flush_rows: int = 50_000, flush_s: float = 60.0):  # fmt: skip
        self.dir = Path(out)
        if check_not_link(self.dir) and not self.dir.is_dir():
            raise ValueError(f"{out} is a file: a partitioned output is a directory (or use .csv / .jsonl)")
        super().__init__(identity, root, columns, overwrite, self.dir / "_done.sqlite")
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._lock = exclusive_lock(self.dir / ".lock", str(self.dir))
        self._rows: list[dict] = []
        self._skips: list[Skipped] = []
        self._chunks: list[int] = []
        self._last_flush = time.monotonic()

    @property
    def paths(self):
        return self

    @property
    def predictions(self) -> Path:
        return self.dir

    @property
    def skipped(self) -> Path:
        return self.dir

    @property
    def summary(self) -> Path:
        return self.dir / "_summary.json"

    @property
    def work(self) -> Path:
        return self.dir / "_work"

    def __enter__(self) -> PartitionedLog:
        import pyarrow.parquet as pq

        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        try:
            m = self.dir / self.MANIFEST
            is_regular_file(m)
            if self.overwrite:
                for f in self.dir.glob("*.parquet"):
                    f.unlink()
                for f in (m, self.index.path, Path(f"{self.index.path}-wal"), Path(f"{self.index.path}-shm")):
                    f.unlink(missing_ok=True)
            self.state = {"format": META_VERSION, "identity": self.identity, "root": self.root,
                          "columns": self.columns, "parts": [], "skipped_parts": [],
                          "counts": {"rows": 0, "skipped": 0}, "source_prefix": None}  # fmt: skip
            if is_regular_file(m):
                old = _read_meta(m)
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
            self.n_rows, self.n_skipped = self.state["counts"]["rows"], self.state["counts"]["skipped"]
            self._resume_prefix = self.state.get("source_prefix")
            upto = self.index.open()
            have = self._counts()
            if upto is None or any(upto.get(k, 0) > have[k] for k in have):
                self.index.reset()
                upto = {k: 0 for k in have}
            for kind in have:  # parts committed after the index was last updated (or all of them: a rebuild)
                for name in self.state[kind][upto.get(kind, 0) :]:
                    raw = pq.read_table(self.dir / name, columns=["path_bytes"]).column("path_bytes").to_pylist()
                    self.index.add([os.fsdecode(b) for b in raw], upto)
            self.index.add([], have)
            write_json(m, self.state)
        except BaseException:
            self.index.close()
            self._lock.__exit__()
            raise
        return self

    def append(self, rows: list[dict], skipped: list[Skipped], chunks: list[int] | None = None) -> None:
        self._rows += rows
        self._skips += skipped
        self._chunks += chunks or []
        self.n_rows += len(rows)
        self.n_skipped += len(skipped)
        if len(self._rows) + len(self._skips) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def commit(self) -> None:
        self.flush()

    def _counts(self) -> dict[str, int]:
        return {"parts": len(self.state["parts"]), "skipped_parts": len(self.state["skipped_parts"])}

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
            path = self.dir / name
            try:
                with atomic_path(path) as tmp:
                    pq.write_table(pa.table(cols), tmp)
            except OSError as e:  # pyarrow's "Error writing bytes to file" names neither the file nor the cause
                import errno

                code = e.errno or (errno.ENOSPC if "No space left" in str(e) or "errno 28" in str(e) else None)
                raise OSError(code, str(e).splitlines()[0], str(path)) from None
            return name

        keys = [r["path"] for r in self._rows] + [x.path for x in self._skips]
        if self._rows:
            self.state["parts"].append(write("part", self._rows, self.columns))
        if self._skips:
            self.state["skipped_parts"].append(write("skipped", skipped_records(self._skips), list(SKIPPED_COLUMNS)))
        self.tracker.committed(self._chunks)
        self.state["counts"] = {"rows": self.n_rows, "skipped": self.n_skipped}
        self.state["source_prefix"] = self.tracker.prefix
        write_json(self.dir / self.MANIFEST, self.state)  # the commit point
        self.index.add(keys, self._counts())
        self._rows, self._skips, self._chunks = [], [], []
        self._last_flush = time.monotonic()
