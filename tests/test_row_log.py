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
