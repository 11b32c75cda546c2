"""toolkit/done_index.py and toolkit/locks.py on their own (no model): the Bloom filter's guarantees, keys in
flight and their spill to disk, the index's commit / reopen / reset cycle, `claim`'s exactness, and the output
lock's refusal, message and release. tests/test_runners.py covers them inside the runners."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from toolkit.done_index import _BATCH, Bloom, DoneIndex, InFlight


def test_bloom_has_no_false_negatives_and_few_false_positives():
    """Bugs: a probe dropped or mis-placed (false negatives), or the size or probe count shrunk (false positives)."""
    b = Bloom(10_000)
    assert b.m == 120_000 and b.k == 4 and len(b.bits) == 15_000
    keys = [f"img/{i}.png" for i in range(10_000)]
    b.add(keys)
    assert b.maybe(keys).all()
    fp = b.maybe([f"other/{i}.png" for i in range(20_000)]).mean()
    assert fp < 0.01  # 12 bits per key, 4 probes: about 0.4%
    assert Bloom(10).m == 1 << 16 and Bloom(0, bits_per_key=3, probes=2).k == 2
    assert Bloom(100_000, bits_per_key=3).m == 300_000
    assert b.maybe([]).shape == (0,) and b.maybe([]).dtype == bool
    empty = Bloom(100)
    empty.add([])
    assert not empty.maybe(keys[:100]).any() and empty.maybe(keys[:3]).dtype == bool


def test_bloom_positions_use_every_probe_within_the_array():
    """Bugs: probes collapsing onto one position, or positions past the array."""
    b = Bloom(1000, probes=4)
    pos = b._positions(["a", "b", "c"])
    assert pos.shape == (4, 3) and pos.min() >= 0 and pos.max() < b.m
    assert all(len(set(pos[:, j])) == 4 for j in range(3))
    b.add(["a"])
    assert int(np.unpackbits(b.bits).sum()) == 4


class _Db:
    def __init__(self):
        self.db = sqlite3.connect(":memory:", isolation_level=None)


def test_in_flight_spills_past_its_limit_and_stays_exact():
    """Bugs: the spill not triggered at the limit, a spilled key forgotten, or a committed key left in memory.
    A committed key that was spilled stays in the table on purpose (claim asks for flight or done; deleting it
    cost a random B-tree write per key)."""
    holder = _Db()
    f = InFlight(lambda: holder.db, limit=3)
    f.add("a")
    f.add("b")
    assert f.spilled == 0 and len(f) == 2 and "a" in f and "z" not in f
    f.add("c")  # reaches the limit: all three go to disk
    assert f.spilled == 3 and f.mem == set() and len(f) == 3
    assert "a" in f and "c" in f and "z" not in f
    f.add("d")
    assert len(f) == 4 and "d" in f
    f.difference_update(["a", "d"])
    assert "d" not in f and f.mem == set() and "a" in f and "b" in f
    assert InFlight(lambda: None).limit == 200_000


def test_index_commit_reopen_and_reset(tmp_path):
    """Bugs: offsets not kept, keys not kept across a reopen, `empty` wrong, or a damaged file not reset."""
    path = tmp_path / "out.csv.done.sqlite"
    d = DoneIndex(path)
    assert d.open() is None and d.empty and d.count() == 0
    assert d.done(["a"]) == set()
    d.add(["a", "b", "a"], {"rows": 10})
    assert not d.empty and d.count() == 2
    d.add([], {"rows": 12})
    d.close()
    assert d.db is None
    again = DoneIndex(path)
    assert again.open() == {"rows": 12} and not again.empty and again.count() == 2
    assert again.done(["a", "c", "b"]) == {"a", "b"}
    again.close()
    path.write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{path.name}{suffix}").write_bytes(b"junk")
    broken = DoneIndex(path)
    assert broken.open() is None and broken.empty and broken.count() == 0
    for suffix in ("-wal", "-shm"):  # the damaged file's journal went with it
        f = tmp_path / f"{path.name}{suffix}"
        assert not f.exists() or f.read_bytes() != b"junk"
    broken.close()


def test_index_refuses_a_link(tmp_path):
    """Bug: the index opened through a planted link (it would write SQLite pages into the link's target)."""
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "i.sqlite").symlink_to(target)
    with pytest.raises(ValueError, match="link"):
        DoneIndex(tmp_path / "i.sqlite").open()
    assert target.read_text() == "keep"


def test_done_looks_up_in_batches_and_keeps_odd_bytes(tmp_path):
    """Bugs: a batch boundary losing a key, or a key with undecodable bytes merged or mangled."""
    d = DoneIndex(tmp_path / "i.sqlite")
    d.open()
    keys = [f"k{i}" for i in range(2 * _BATCH + 7)] + ["caf\udce9.png", "café.png"]
    d.add(keys[::2], {"n": 1})
    got = d.done(keys)
    assert got == set(keys[::2]) and _BATCH == 500
    assert d.done(["caf\udce9.png", "café.png"]) == {k for k in keys[::2] if k.startswith("caf")}


def test_claim_is_exact(tmp_path):
    """Bugs: a key listed twice claimed twice, a key in flight or committed claimed again, or `start` not loading the
    committed keys into the filter (a Bloom negative would then call a committed key new)."""
    path = tmp_path / "i.sqlite"
    d = DoneIndex(path)
    d.open()
    d.add(["old1", "old2"], {"n": 2})
    d.close()
    d = DoneIndex(path)
    d.open()
    d.start(expected=1000)
    assert d.bloom is not None and d.bloom.m >= 1 << 16
    assert d.claim(["a", "old1", "a", "b"]) == [True, False, False, True]
    assert d.claim(["b", "c", "old2"]) == [False, True, False]
    assert len(d.in_flight) == 3
    d.add(["a", "b"], {"n": 4})
    assert len(d.in_flight) == 1 and d.claim(["a", "c", "d"]) == [False, False, True]
    without_filter = DoneIndex(tmp_path / "j.sqlite")
    without_filter.open()
    without_filter.add(["x"], {"n": 1})
    assert without_filter.claim(["x", "y", "y"]) == [False, True, False]


def test_lock_refuses_a_second_holder_names_the_first_and_releases(tmp_path):
    """Bugs: a second holder let in, the message without the holder's pid or lock path, the lock file left behind,
    or the lock not released when its holder dies."""
    from toolkit.locks import Locked, OutputLocked, exclusive_lock, try_lock

    assert OutputLocked is Locked and issubclass(Locked, ValueError)
    lock = tmp_path / "sub" / "out.csv.lock"
    with exclusive_lock(lock, "out.csv") as held:
        assert held.fd is not None and lock.read_text() == str(os.getpid())
        code = (
            "import sys; from toolkit.locks import exclusive_lock\n"
            "try:\n    exclusive_lock(sys.argv[1], 'out.csv').__enter__()\n"
            "except ValueError as e:\n    print(e)"
        )
        res = subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60)
        assert res.stdout.strip() == (
            f"out.csv is being written by another run (pid {os.getpid()}, lock {lock}); "
            "wait for it to finish or choose another --out"
        )
    assert not lock.exists() and held.fd is None
    held.__exit__(None, None, None)  # a second release is harmless
    fd = try_lock(lock)
    assert fd is not None
    os.close(fd)  # the kernel drops the flock with its last fd: the next holder gets it at once
    with exclusive_lock(lock, "out.csv"):
        pass


def test_lock_refuses_a_link_and_leaves_its_target(tmp_path):
    """Bug: the lock file opened through a planted link (its target truncated and overwritten with a pid)."""
    from toolkit.locks import exclusive_lock

    target = tmp_path / "precious"
    target.write_text("data")
    (tmp_path / "out.lock").symlink_to(target)
    with pytest.raises(ValueError, match="link"), exclusive_lock(tmp_path / "out.lock", "out"):
        pass
    assert target.read_text() == "data"


def test_in_flight_counts_every_spill():
    """Bug: the spilled count replaced at each spill instead of added (len() and lookups after two spills)."""
    holder = _Db()
    f = InFlight(lambda: holder.db, limit=2)
    for k in "abcde":
        f.add(k)
    assert f.spilled == 4 and len(f) == 5 and all(k in f for k in "abcde")


def test_reset_leaves_an_empty_index_even_beside_an_old_journal(tmp_path):
    """Bug: a reset index keeping keys (from its file or from the write-ahead log of the run that wrote it). SQLite
    does not replay a journal that belongs to another file (tried: removing it or not gives the same result here),
    so reset removes it for tidiness; what is checked is that nothing comes back."""
    import shutil

    path = tmp_path / "i.sqlite"
    d = DoneIndex(path)
    d.open()
    d.add([f"k{i}" for i in range(50)], {"n": 50})
    saved = {}
    for suffix in ("-wal", "-shm"):
        src = tmp_path / f"i.sqlite{suffix}"
        if src.exists():
            shutil.copy(src, tmp_path / f"saved{suffix}")
            saved[suffix] = tmp_path / f"saved{suffix}"
    d.close()
    for suffix, f in saved.items():  # the journal of a run whose index is being thrown away
        shutil.copy(f, tmp_path / f"i.sqlite{suffix}")
    again = DoneIndex(path)
    again.reset()
    assert again.count() == 0 and again.done(["k1"]) == set() and again.empty
    again.close()


def test_start_loads_committed_keys_that_are_not_utf8(tmp_path):
    """Bug: committed keys read back strictly as UTF-8 (a name that is not fails the resume)."""
    path = tmp_path / "i.sqlite"
    d = DoneIndex(path)
    d.open()
    d.add(["caf\udce9.png"], {"n": 1})
    d.close()
    d = DoneIndex(path)
    d.open()
    d.start(expected=10)
    assert d.claim(["caf\udce9.png", "new.png"]) == [False, True]


def test_index_connection_settings_threads_and_spill_through_its_own_connection(tmp_path):
    """Bugs (survivors of the mutation run): a pragma misspelled (SQLite ignores an unknown pragma silently), the
    connection not in autocommit mode (the explicit BEGIN / COMMIT are the transactions), the connection refused
    to the writer thread, or the in-flight set spilling through something other than this index's connection."""
    import threading

    d = DoneIndex(tmp_path / "i.sqlite")
    d.open()

    def pragma(name):
        return d.db.execute(f"PRAGMA {name}").fetchone()[0]

    assert (pragma("journal_mode"), pragma("synchronous"), pragma("temp_store"), pragma("cache_size")) == (
        "wal", 0, 1, -16000)  # fmt: skip
    assert d.db.isolation_level is None
    errors = []

    def writer():
        try:
            d.add(["from-thread"], {"n": 1})
        except Exception as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    t.join(30)
    assert errors == [] and d.done(["from-thread"]) == {"from-thread"}
    d.start(expected=10)
    d.in_flight.limit = 2
    assert d.claim(["a", "b", "c", "d", "e"]) == [True] * 5 and d.in_flight.spilled > 0
    assert d.claim(["c", "e", "f"]) == [False, False, True]
    d.add(["a", "b", "c"], {"n": 4})  # committed after their spill: still refused, and the rest stays exact
    assert d.claim(["a", "c", "f", "g", "g"]) == [False, False, False, True, False]


def test_lock_details_holder_text_permissions_race_and_a_vanished_file(tmp_path, monkeypatch):
    """Bugs (survivors of the mutation run): the lock's folders not created with their parents, its mode not
    0644, the holder shown wrongly when the lock file is empty or not UTF-8, a lock file replaced between the
    flock and the inode check taken anyway (or its fd closed wrongly), and a release failing when the lock file
    is already gone."""
    import toolkit.locks as locks
    from toolkit.locks import Locked, exclusive_lock

    old = os.umask(0)
    try:
        lock = tmp_path / "a" / "b" / "out.lock"
        with exclusive_lock(lock, "out") as held:
            assert lock.stat().st_mode & 0o777 == 0o644 and lock.read_text() == str(os.getpid())
            for content, shown in ((b"", "?"), (b"  \n", "?"), (b"\xff42", "\ufffd42")):
                lock.write_bytes(content)
                with pytest.raises(Locked) as e:
                    exclusive_lock(lock, "out").__enter__()
                assert str(e.value).startswith(f"out is being written by another run (pid {shown}, lock {lock});")
            lock.unlink()  # removed behind the holder's back: releasing must still work
        assert held.fd is None and not lock.exists()
    finally:
        os.umask(old)

    seen = []
    real = os.lstat

    def vanished_once(path, *a, **k):
        seen.append(path)
        if len(seen) == 1:
            raise FileNotFoundError(path)
        return real(path, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(locks.os, "lstat", vanished_once)
        with exclusive_lock(tmp_path / "race.lock", "race"):
            assert len(seen) == 2  # the first fd was for a file that had gone: locked again
    assert (tmp_path / "race.lock").exists() is False
