"""The keys an output already holds (its rows and its skipped inputs), exactly and on disk, so resuming a run of
10^8 inputs does not hold 10^8 keys in memory.

SQLite (the standard library's), one table of keys (their exact bytes: no digest, so no collision can merge two
inputs) and the output offsets up to which the table is complete. The output files are the record: rows are
fsync'ed and committed first, the index follows; after a kill the next run adds the keys between the index's
offsets and the committed ones (the tail), or rebuilds the index from the output when it is missing or
unreadable. The index runs without fsync (WAL, synchronous off): a process kill cannot corrupt it, and an OS
crash at worst leaves an index that is rebuilt. Keys claimed by the running process (in flight, not committed)
live in a temporary table, so a key listed twice is predicted once.
Measured (2 cores): 176,000 inserts/s in sorted batches, 174,000 lookups/s, 44 bytes of disk per key.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

_BATCH = 500  # keys per statement (SQLite's default limit on bound parameters is far above)


def _b(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


class DoneIndex:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None
        self.empty = True  # nothing committed when the run started: lookups can be skipped

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def open(self) -> dict | None:
        """Connect (creating the index if needed); -> the output offsets it covers, or None when it is new,
        missing or unreadable (then it has been reset and the caller rebuilds it from the output)."""
        from toolkit.safe_paths import check_not_link

        check_not_link(self.path)
        try:
            self._connect()
            row = self.db.execute("SELECT value FROM meta WHERE name = 'upto'").fetchone()
            upto = json.loads(row[0]) if row else None
        except (sqlite3.DatabaseError, ValueError):
            self.reset()
            upto = None
        self.empty = self.db.execute("SELECT 1 FROM done LIMIT 1").fetchone() is None
        return upto

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "temp_store=FILE", "cache_size=-16000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE IF NOT EXISTS done (key BLOB PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS claimed (key BLOB PRIMARY KEY) WITHOUT ROWID")

    def reset(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._connect()
        self.empty = True

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ---- writing -------------------------------------------------------------------------------------------
    def add(self, keys: Iterable[str], upto: dict) -> None:
        """Record committed keys and the output offsets they reach, in one transaction."""
        batch = sorted({_b(k) for k in keys})
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO done VALUES (?)", [(k,) for k in batch])
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('upto', ?)", (json.dumps(upto),))
        self.db.execute("COMMIT")
        if batch:
            self.empty = False

    # ---- reading -------------------------------------------------------------------------------------------
    def done(self, keys: list[str]) -> set[str]:
        """The subset of `keys` already committed."""
        if self.empty or not keys:
            return set()
        out = set()
        for i in range(0, len(keys), _BATCH):
            sub = [_b(k) for k in keys[i : i + _BATCH]]
            q = f"SELECT key FROM done WHERE key IN ({','.join('?' * len(sub))})"
            out.update(k.decode("utf-8", "surrogateescape") for (k,) in self.db.execute(q, sub))
        return out

    def claim(self, keys: list[str]) -> list[bool]:
        """Mark keys as taken by this run; -> for each, whether it was new (False: listed earlier in the run)."""
        new: set[bytes] = set()
        self.db.execute("BEGIN")
        for i in range(0, len(keys), _BATCH):
            sub = list(dict.fromkeys(_b(k) for k in keys[i : i + _BATCH]))
            q = f"INSERT OR IGNORE INTO temp.claimed VALUES {','.join(['(?)'] * len(sub))} RETURNING key"
            new.update(k for (k,) in self.db.execute(q, sub))
        self.db.execute("COMMIT")
        out = []
        for k in keys:
            b = _b(k)
            out.append(b in new)
            new.discard(b)  # a key twice in one chunk: only the first is new
        return out

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM done").fetchone()[0]
