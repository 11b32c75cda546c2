"""toolkit/row_log.py without a model: side-file names, row encoding, streamed key reading at byte offsets, the
source tracker's committed prefix, and a PredictionLog's write / commit / kill / resume cycle with the exact bytes
it leaves, its refusals (another version, another identity, a changed or foreign file) and disk errors naming
the file. tests/test_runners.py and tests/test_infer.py drive the same class through the runners."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from toolkit.data.images import Skipped
from toolkit.row_log import (
    META_VERSION,
    SKIPPED_COLUMNS,
    OutputPaths,
    PredictionLog,
    ResumeError,
    SourceTracker,
    Todo,
    _flat,
    _key_bytes,
    encode_rows,
    read_keys,
    write_skipped_csv,
)
from toolkit.sources import open_source

COLS = ("path", "logit")


def test_side_files_are_named_from_the_whole_output_name(tmp_path):
    """Bugs: side files named from the stem (x.csv and x.jsonl would share them, R7), or a wrong format accepted."""
    p = OutputPaths.for_file(tmp_path / "x.CSV")
    assert p.fmt == "csv" and p.predictions == tmp_path / "x.CSV"
    assert [q.name for q in (p.skipped, p.meta, p.summary, p.lock, p.index, p.work)] == [
        "x.CSV.skipped.csv",
        "x.CSV.meta.json",
        "x.CSV.summary.json",
        "x.CSV.lock",
        "x.CSV.done.sqlite",
        "x.CSV.work",
    ]
    assert OutputPaths.for_file(tmp_path / "x.jsonl").fmt == "jsonl"
    assert p.legacy_meta() == tmp_path / "x.meta.json"
    with pytest.raises(ValueError, match=r"x.parquet: predictions file must end in .csv or .jsonl$"):
        OutputPaths.for_file(tmp_path / "x.parquet")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match=r"d.csv is a directory: --out names the predictions file"):
        OutputPaths.for_file(tmp_path / "d.csv")


def test_encode_rows_csv_and_jsonl():
    """Bugs: a column dropped or reordered, quoting lost, non-UTF-8 names not written losslessly."""
    rows = [{"path": 'a,"b".png', "logit": 1.5, "extra": 0}, {"path": "caf\udce9.png", "logit": -2}]
    assert encode_rows(rows, COLS, "csv") == b'"a,""b"".png",1.5\ncaf\xe9.png,-2\n'
    assert encode_rows(rows, COLS, "jsonl") == (
        b'{"path": "a,\\"b\\".png", "logit": 1.5}\n{"path": "caf\\udce9.png", "logit": -2}\n'
    )
    assert encode_rows([], COLS, "csv") == b""
    assert _key_bytes("a") == b"a\0" and _key_bytes("\udce9") == b"\xe9\0"
    assert SKIPPED_COLUMNS == ("path", "reason") and META_VERSION == "causal-deploy-toolkit/predictions@3"


def test_read_keys_streams_between_offsets(tmp_path):
    """Bugs: the header read as a key, the range's end overrun or cut short, the key column taken from the wrong
    place, or a quoted newline splitting a row."""
    f = tmp_path / "p.csv"
    body = [b"logit,path\n", b"1,a.png\n", b'2,"b\nc.png"\n', b"3,d.png\n"]
    f.write_bytes(b"".join(body))
    offs = [0]
    for part in body:
        offs.append(offs[-1] + len(part))
    assert list(read_keys(f, "csv", 0, offs[4])) == ["a.png", "b\nc.png", "d.png"]
    assert list(read_keys(f, "csv", 0, offs[2])) == ["a.png"]
    assert list(read_keys(f, "csv", offs[2], offs[3], ("logit", "path"))) == ["b\nc.png"]
    assert list(read_keys(f, "csv", offs[3], offs[3])) == [] and list(read_keys(f, "csv", offs[3], offs[2])) == []
    j = tmp_path / "p.jsonl"
    lines = [b'{"path": "x"}\n', b"\n", b'{"path": "y\\udce9"}\n', b'{"path": "z"}\n']
    j.write_bytes(b"".join(lines))
    assert list(read_keys(j, "jsonl", 0, len(b"".join(lines[:3])))) == ["x", "y\udce9"]
    assert list(read_keys(j, "jsonl", len(lines[0]) + 1, len(b"".join(lines)))) == ["y\udce9", "z"]
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"\n")
    assert list(read_keys(empty, "csv", 0, 1)) == []


def test_todo_is_a_named_triple():
    t = Todo("a.png", "k", 3)
    assert (t.path, t.key, t.chunk) == ("a.png", "k", 3) and tuple(t) == ("a.png", "k", 3)


def test_source_tracker_advances_only_over_wholly_committed_chunks():
    """Bugs: a chunk counted before its last row commits, chunks counted out of order, or the digest not the one
    of the prefix's end."""
    t = SourceTracker()
    assert t.prefix == {"items": 0, "sha256": hashlib.sha256().hexdigest()}
    t.opened(0, 10, 2, "d0")
    t.opened(1, 10, 0, "d1")  # nothing to do in chunk 1, but chunk 0 is open
    t.opened(2, 5, 1, "d2")
    assert t.prefix["items"] == 0
    t.committed([0])
    assert t.prefix["items"] == 0
    t.committed([2])  # chunk 2 done, but 0 is not: the prefix waits
    assert t.prefix["items"] == 0
    t.committed([0])
    assert t.prefix == {"items": 25, "sha256": "d2"} and t.next_chunk == 3
    assert t.remaining == {} and t.sizes == {} and t.digests == {}


def _list(tmp_path, names, name="in.txt"):
    f = tmp_path / name
    f.write_text("".join(n + "\n" for n in names))
    return open_source(f)


def _rows(todo):
    return [{"path": t.key, "logit": float(len(t.key))} for t in todo]


def _log(tmp_path, out="p.csv", identity=None, root="R", **kw):
    return PredictionLog(tmp_path / out, COLS, identity or {"model": "m1", "threshold": 0.5}, root, **kw)


def test_a_fresh_log_writes_headers_meta_and_rows(tmp_path):
    """Bugs: the CSV header, the skipped header, the meta's committed sizes or counts wrong, or rows not kept."""
    src = _list(tmp_path, ["a.png", "b.png", "c.png"])
    with _log(tmp_path) as log:
        (todo,) = list(log.todo(src))
        assert [t.key for t in todo] == ["a.png", "b.png", "c.png"] and {t.chunk for t in todo} == {0}
        log.append(_rows(todo[:2]), [Skipped("c.png", "corrupt")], [0, 0, 0])
    assert (tmp_path / "p.csv").read_bytes() == b"path,logit\na.png,5.0\nb.png,5.0\n"
    assert (tmp_path / "p.csv.skipped.csv").read_bytes() == b"path,reason\nc.png,corrupt\n"
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["format"] == META_VERSION and meta["root"] == "R" and meta["columns"] == list(COLS)
    assert meta["committed"] == {"predictions": 31, "skipped": 26} and meta["counts"] == {"rows": 2, "skipped": 1}
    assert meta["identity"] == {"model": "m1", "threshold": 0.5}
    assert meta["source_prefix"]["items"] == 3
    assert not (tmp_path / "p.csv.lock").exists()


def test_a_jsonl_log_has_no_header(tmp_path):
    src = _list(tmp_path, ["a.png"])
    with _log(tmp_path, "p.jsonl") as log:
        log.append(_rows(next(log.todo(src))), [])
    assert (tmp_path / "p.jsonl").read_bytes() == b'{"path": "a.png", "logit": 5.0}\n'


def test_resume_skips_what_is_committed_and_cuts_what_is_not(tmp_path):
    """Bugs: committed rows predicted again, a torn tail kept, the committed prefix not skipped, or rows appended
    after a resume under the wrong counts."""
    names = [f"{i}.png" for i in range(10)]
    src = _list(tmp_path, names)
    with _log(tmp_path, commit_rows=10**9, commit_s=10**9) as log:
        todo = [t for chunk in log.todo(src, chunk_size=4) for t in chunk]
        log.append(_rows(todo[:4]), [], [0] * 4)
        log.commit()
        committed = (tmp_path / "p.csv").stat().st_size
        log._write("predictions", b"torn,ro")  # a kill in the middle of a row: on disk, never committed
        log._files = {}  # the process dies: nothing more is committed, not even on exit
    assert (tmp_path / "p.csv").stat().st_size == committed + 7
    with _log(tmp_path) as log:
        assert log.n_rows == 4 and (tmp_path / "p.csv").stat().st_size == committed
        assert log._verified_prefix(src) == 4  # chunk 0 was wholly committed
        todo = [t for chunk in log.todo(src, chunk_size=4) for t in chunk]
        assert [t.key for t in todo] == names[4:] and [t.chunk for t in todo] == [1] * 4 + [2] * 2
        log.append(_rows(todo), [], [t.chunk for t in todo])
    keys = list(read_keys(tmp_path / "p.csv", "csv", 0, (tmp_path / "p.csv").stat().st_size))
    assert keys == names
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["counts"]["rows"] == 10 and meta["source_prefix"]["items"] == 10


def test_a_source_that_changed_its_start_is_checked_key_by_key(tmp_path):
    """Bug: the committed prefix skipped although the source no longer starts with those keys."""
    with _log(tmp_path) as log:
        log.append(_rows(next(log.todo(_list(tmp_path, ["a.png", "b.png"])))), [], [0, 0])
    other = _list(tmp_path, ["x.png", "a.png", "b.png"], "other.txt")
    with _log(tmp_path) as log:
        assert log._verified_prefix(other) == 0
        assert [t.key for chunk in log.todo(other) for t in chunk] == ["x.png"]
    shorter = _list(tmp_path, ["a.png"], "short.txt")
    with _log(tmp_path) as log:
        assert log._verified_prefix(shorter) == 0


def test_a_key_listed_twice_is_predicted_once(tmp_path):
    with _log(tmp_path) as log:
        todo = [t for chunk in log.todo(_list(tmp_path, ["a.png", "./a.png", "a.png"]), chunk_size=1) for t in chunk]
    assert [t.key for t in todo] == ["a.png", "./a.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"identity": {"model": "m2", "threshold": 0.5}}, r"was written with a different model \(was model=m1\)"),
        ({"identity": {"model": "m1", "threshold": 0.7}}, r"different threshold \(was threshold=0.5\)"),
        ({"root": "S"}, r"holds predictions for R, not S; use another --out, or --overwrite to start again"),
    ],
)
def test_resume_refuses_another_identity_or_input(tmp_path, change, message):
    """Bugs: a run resumed under another model, threshold or input, or its message not naming what changed."""
    with _log(tmp_path) as log:
        log.append(_rows(next(log.todo(_list(tmp_path, ["a.png"])))), [])
    kw = {"identity": None, "root": "R", **change}
    with pytest.raises(ResumeError, match=message), _log(tmp_path, **kw):
        pass
    with _log(tmp_path, overwrite=True, **kw) as log:  # --overwrite starts again
        assert log.n_rows == 0
    assert (tmp_path / "p.csv").read_bytes() == b"path,logit\n"


def test_resume_refuses_what_it_cannot_trust(tmp_path):
    """Bugs: a meta of another version, a shortened output, invalid JSON, or a file not written by toolkit infer
    resumed."""
    with _log(tmp_path) as log:
        log.append(_rows(next(log.todo(_list(tmp_path, ["a.png"])))), [])
    meta = tmp_path / "p.csv.meta.json"
    good = meta.read_text()
    meta.write_text(good.replace(META_VERSION, "causal-deploy-toolkit/predictions@2"))
    with (
        pytest.raises(ResumeError, match=r"was written by another version of the toolkit; use --overwrite$"),
        _log(tmp_path),
    ):
        pass
    meta.write_text("{not json")
    with (
        pytest.raises(ResumeError, match=r"p.csv.meta.json is not valid JSON \(.*\); use --overwrite$"),
        _log(tmp_path),
    ):
        pass
    meta.write_text("[1, 2]")
    with pytest.raises(ResumeError, match=r"is not a predictions record; use --overwrite$"), _log(tmp_path):
        pass
    meta.write_text(good)
    (tmp_path / "p.csv").write_bytes(b"path,logit\n")
    with (
        pytest.raises(ResumeError, match=r"p.csv is shorter than p.csv.meta.json records: it was changed"),
        _log(tmp_path),
    ):
        pass
    meta.unlink()
    with (
        pytest.raises(ResumeError, match=r"p.csv exists but has no p.csv.meta.json: not written by 'toolkit infer'"),
        _log(tmp_path),
    ):
        pass
    (tmp_path / "p.meta.json").write_text("{}")
    with (
        pytest.raises(ResumeError, match=r"written by an earlier toolkit .*p.meta.json; now p.csv.meta.json"),
        _log(tmp_path),
    ):
        pass
    assert not (tmp_path / "p.csv.lock").exists()  # every refusal released the lock


def test_commits_follow_rows_and_time(tmp_path, monkeypatch):
    """Bugs: the row or time trigger of a commit ignored, or a commit indexing keys before their rows are durable."""
    from toolkit import row_log

    clock = [0.0]
    monkeypatch.setattr(row_log.time, "monotonic", lambda: clock[0])
    src = _list(tmp_path, [f"{i}.png" for i in range(6)])
    with _log(tmp_path, commit_rows=3, commit_s=5.0) as log:
        todo = next(log.todo(src))
        log.append(_rows(todo[:2]), [], [0, 0])
        assert log.index.count() == 0 and log._pending == ["0.png", "1.png"]
        log.append(_rows(todo[2:3]), [], [0])  # the third row: a commit
        assert log.index.count() == 3 and log._pending == []
        log.append(_rows(todo[3:4]), [], [0])
        assert log.index.count() == 3
        clock[0] = 5.0  # commit_s later
        log.append(_rows(todo[4:5]), [], [0])
        assert log.index.count() == 5
        log.append([], [], [])
        assert log.n_rows == 5


def test_disk_errors_name_the_file_and_keep_what_was_committed(tmp_path):
    """Bugs: a disk-full error without the file's name (R9), or the failed batch's bytes committed on exit."""
    src = _list(tmp_path, ["a.png", "b.png"])
    with pytest.raises(OSError) as e, _log(tmp_path) as log:
        todo = next(log.todo(src))
        log.append(_rows(todo[:1]), [], [0])
        log.commit()
        f, path, size = log._files["predictions"]

        class Full:
            def write(self, view):
                raise OSError(errno.ENOSPC, "No space left on device")

            def fileno(self):
                return f.fileno()

            def close(self):
                f.close()

        log._files["predictions"] = (Full(), path, size)
        log.append(_rows(todo[1:]), [], [0])
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "p.csv")
    assert "No space left on device" in str(e.value) and "p.csv" in str(e.value)
    assert (tmp_path / "p.csv").read_bytes() == b"path,logit\na.png,5.0\n"


def test_flat_names_nested_identity_fields():
    assert _flat({"identity": {"a": 1, "detector": {"t": 2}}, "root": "r"}) == {"a": 1, "detector.t": 2, "root": "r"}
    assert _flat({"purifier": {"x": 1}, "other": {"y": 2}}) == {"purifier.x": 1, "other": {"y": 2}}


def test_write_skipped_csv(tmp_path):
    out = write_skipped_csv(tmp_path / "s.csv", [Skipped("a,b.png", "bad"), Skipped("c.png", "empty file")])
    assert out == tmp_path / "s.csv"
    assert out.read_bytes() == b'path,reason\n"a,b.png",bad\nc.png,empty file\n'


def test_resume_refusal_names_the_file_and_every_changed_field(tmp_path):
    """Bugs: the message without the output's path, a field present on one side only not named, or the changed
    fields run together."""
    with _log(tmp_path) as log:
        log.append(_rows(next(log.todo(_list(tmp_path, ["a.png"])))), [])
    new = {"model": "m2", "threshold": 0.7, "engine": "openvino"}
    with pytest.raises(ResumeError) as e, _log(tmp_path, identity=new):
        pass
    assert str(e.value) == (
        f"{tmp_path / 'p.csv'} was written with a different engine, model, threshold (was "
        "engine=None, model=m1, threshold=0.5); use another --out, or --overwrite to start again"
    )


def _fill(tmp_path, names, out="p.csv", columns=COLS, skipped=(), **kw):
    """A finished log: every name a row, then `skipped` as skipped inputs."""
    src = _list(tmp_path, list(names) + list(skipped), "all.txt")
    with PredictionLog(tmp_path / out, columns, {"model": "m1"}, "R", **kw) as log:
        todo = [t for chunk in log.todo(src) for t in chunk]
        rows = [{"path": t.key, "logit": 1.0} for t in todo if t.key not in skipped]
        log.append(rows, [Skipped(t.key, "bad") for t in todo if t.key in skipped], [t.chunk for t in todo])
    return src


def _claims(tmp_path, src, out="p.csv", columns=COLS):
    with PredictionLog(tmp_path / out, columns, {"model": "m1"}, "R") as log:
        return [t.key for chunk in log.todo(src) for t in chunk]


def _index_files(tmp_path, out="p.csv"):
    return [tmp_path / f"{out}.done.sqlite{s}" for s in ("", "-wal", "-shm")]


@pytest.mark.parametrize("out, columns", [("p.csv", ("logit", "path")), ("p.jsonl", COLS)])
def test_a_lost_index_is_rebuilt_from_the_output_rows_and_skipped(tmp_path, out, columns):
    """Bugs: a lost index not rebuilt, the key column read from the wrong place (path not first, or the skipped
    file read with the predictions' columns), a JSON-lines output read as CSV, or the rebuilt offsets not kept (every
    later resume rebuilding again)."""
    names = [f"{i}.png" for i in range(7)]
    src = _fill(tmp_path, names[:5], out, columns, skipped=names[5:])
    for f in _index_files(tmp_path, out):
        f.unlink(missing_ok=True)
    more = _list(tmp_path, [*names, "new.png"], "more.txt")
    assert _claims(tmp_path, more, out, columns) == ["new.png"]
    assert _claims(tmp_path, src, out, columns) == []
    from toolkit.done_index import DoneIndex

    d = DoneIndex(tmp_path / f"{out}.done.sqlite")
    meta = json.loads((tmp_path / f"{out}.meta.json").read_text())
    assert d.open() == meta["committed"] and d.count() == 7  # the index covers the output: no rebuild next time
    d.close()


def test_a_stale_index_reads_only_the_tail_and_one_ahead_of_the_output_is_rebuilt(tmp_path):
    """Bugs: an index behind the output not brought up to date (the tail's keys predicted again), or an index ahead
    of the output (an older output put back) trusted, so inputs it never holds count as done."""
    import shutil

    cols = ("logit", "path")
    a = [f"a{i}.png" for i in range(4)]
    b = [f"b{i}.png" for i in range(4)]
    _fill(tmp_path, a, columns=cols, skipped=["a_bad.png"])
    keep = tmp_path / "keep"
    keep.mkdir()
    for f in [*_index_files(tmp_path), tmp_path / "p.csv", tmp_path / "p.csv.meta.json",
              tmp_path / "p.csv.skipped.csv"]:  # fmt: skip
        if f.exists():
            shutil.copy(f, keep / f.name)
    _fill(tmp_path, a + b, columns=cols, skipped=["a_bad.png", "b_bad.png"])
    every = _list(tmp_path, a + b + ["a_bad.png", "b_bad.png", "c.png"], "every.txt")
    for f in _index_files(tmp_path):  # the index of the first run, behind the output
        f.unlink(missing_ok=True)
        if (keep / f.name).exists():
            shutil.copy(keep / f.name, f)
    assert _claims(tmp_path, every, columns=cols) == ["c.png"]
    # the output and meta of the first run put back under the newer index: b*.png are not in this output
    _fill(tmp_path, a + b + ["c.png"], columns=cols, skipped=["a_bad.png", "b_bad.png"])
    for name in ("p.csv", "p.csv.meta.json", "p.csv.skipped.csv"):
        shutil.copy(keep / name, tmp_path / name)
    assert _claims(tmp_path, every, columns=cols) == [*b, "b_bad.png", "c.png"]


def test_a_rebuild_past_one_batch_of_keys(tmp_path):
    """Bugs: the rebuild's batches of 100,000 keys written wrongly (the branch only a large output takes)."""
    n = 100_050
    body = "path,logit\n" + "".join(f"{i}.png,1.0\n" for i in range(n))
    (tmp_path / "p.csv").write_text(body)
    (tmp_path / "p.csv.skipped.csv").write_text("path,reason\n")
    meta = {"format": META_VERSION, "identity": {"model": "m1"}, "root": "R", "columns": list(COLS),
            "committed": {"predictions": len(body), "skipped": 12}, "counts": {"rows": n, "skipped": 0},
            "source_prefix": {"items": 0, "sha256": hashlib.sha256().hexdigest()}}  # fmt: skip
    (tmp_path / "p.csv.meta.json").write_text(json.dumps(meta))
    with _log(tmp_path, identity={"model": "m1"}) as log:
        assert log.index.count() == n
        assert log.index.done(["0.png", "100049.png", "100050.png"]) == {"0.png", "100049.png"}


def test_appends_count_and_track_across_batches(tmp_path, monkeypatch):
    """Bugs: a batch of only skipped inputs dropped, counts or chunk markers replaced instead of added, or the time
    since the last commit computed with the wrong sign."""
    from toolkit import row_log

    clock = [100.0]
    monkeypatch.setattr(row_log.time, "monotonic", lambda: clock[0])
    src = _list(tmp_path, [f"{i}.png" for i in range(6)])
    with _log(tmp_path, commit_rows=100, commit_s=5.0) as log:
        todo = [t for chunk in log.todo(src, chunk_size=2) for t in chunk]
        log.append([], [Skipped(todo[0].key, "bad")], [todo[0].chunk])
        log.append(_rows(todo[1:2]), [Skipped(todo[2].key, "bad")], [todo[1].chunk, todo[2].chunk])
        log.append(_rows(todo[3:6]), [], [t.chunk for t in todo[3:6]])
        assert log.index.count() == 0  # 100 s after start, 0 s since the last commit: nothing committed yet
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["counts"] == {"rows": 4, "skipped": 2} and meta["source_prefix"]["items"] == 6
    assert (tmp_path / "p.csv.skipped.csv").read_text() == "path,reason\n0.png,bad\n2.png,bad\n"


def test_todo_paths_and_the_digest_of_a_prefix_skipped_whole(tmp_path):
    """Bugs: a todo's path lost, or a resume that skipped its whole prefix recording no digest for it (the next
    resume could not skip it)."""
    names = [f"{i}.png" for i in range(5)]
    src = _list(tmp_path, names)
    with _log(tmp_path) as log:
        todo = [t for chunk in log.todo(src, chunk_size=2) for t in chunk]
        assert [t.path for t in todo] == [str(tmp_path / n) for n in names]
        log.append(_rows(todo), [], [t.chunk for t in todo])
    want = hashlib.sha256(b"".join(_key_bytes(n) for n in names)).hexdigest()
    with _log(tmp_path) as log:
        assert [t for chunk in log.todo(src, chunk_size=2) for t in chunk] == []
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["source_prefix"] == {"items": 5, "sha256": want}


def test_short_writes_are_completed_and_a_torn_batch_is_cut_on_exit(tmp_path):
    """Bugs: a short write not continued, a batch that failed half-way kept in the file, or an error without its
    message."""
    src = _list(tmp_path, ["a.png", "b.png"])
    with pytest.raises(OSError) as e, _log(tmp_path) as log:
        todo = next(log.todo(src))
        f, path, size = log._files["predictions"]

        class Dribble:  # writes at most 3 bytes per call, as a pipe or a signal-interrupted write may
            def __init__(self, fail_after=None):
                self.fail_after = fail_after

            def write(self, view):
                if self.fail_after is not None:
                    if self.fail_after <= 0:
                        raise OSError("device went away")
                    self.fail_after -= 1
                return f.write(view[:3])

            def fileno(self):
                return f.fileno()

            def close(self):
                f.close()

        log._files["predictions"] = (Dribble(), path, size)
        log.append(_rows(todo[:1]), [], [0])
        log.commit()
        assert (tmp_path / "p.csv").read_bytes() == b"path,logit\na.png,5.0\n"
        log._files["predictions"] = (Dribble(fail_after=2), path, log._files["predictions"][2])
        log.append(_rows(todo[1:]), [], [0])
    assert e.value.strerror == "device went away" and e.value.filename == str(tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_bytes() == b"path,logit\na.png,5.0\n"  # the 6 bytes of b's row are cut


def test_a_failed_commit_names_the_file_and_is_raised_on_a_clean_exit(tmp_path, monkeypatch):
    """Bugs: an fsync error without the file's name, errno or reason, or swallowed when the block itself ended
    normally."""
    from toolkit import row_log

    src = _list(tmp_path, ["a.png"])

    def bad_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as e, _log(tmp_path) as log:
        log.append(_rows(next(log.todo(src))), [], [0])
        monkeypatch.setattr(row_log.os, "fsync", bad_fsync)
    assert e.value.errno == errno.EIO and e.value.strerror == "Input/output error"
    assert e.value.filename in (str(tmp_path / "p.csv"), str(tmp_path / "p.csv.skipped.csv"))


def test_read_keys_keeps_raw_bytes_and_carriage_returns(tmp_path):
    """Bugs: a name that is not UTF-8 failing to read back (strict decoding), or a carriage return inside a quoted
    name translated (universal newlines instead of the csv module's own)."""
    f = tmp_path / "p.csv"
    f.write_bytes(b'path,logit\ncaf\xe9.png,1\n"a\rb.png",2\n')
    assert list(read_keys(f, "csv", 0, f.stat().st_size)) == ["caf\udce9.png", "a\rb.png"]
