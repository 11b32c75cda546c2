"""The one runner loop and its output (toolkit/runner.py, row_log.py, parquet_parts.py, sources.py): keys computed
once (R2), side files named from the whole output name (R7), errors that name the file (R9), a server that stays
away (R10), and memory that does not grow with the number of inputs. Each defect test says what it guards."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import noise_images
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.pipelines.infer import InferConfig, run_inference

runner = CliRunner()
CLI = [sys.executable, "-c", "from toolkit.cli import main; main()"]


def _images(root: Path, n: int) -> Path:
    return noise_images(root, n, size=36, seed=2)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def test_r2_two_spellings_of_one_file_are_two_inputs_keyed_as_written(exported_artifact, tmp_path):
    """R2: the local runner keyed `a.png` and `./a.png` as one file (a dict on normalised paths): 2 rows with 1
    distinct key, and a rerun appended a third. `--ray` and `--server` keyed them as written."""
    imgs = _images(tmp_path / "imgs", 3)
    spellings = ["imgs/{}", "./imgs/{}", "imgs/./{}", "imgs//{}", str(imgs) + "/{}", "imgs/../imgs/{}"]
    lines = [s.format(p.name) for p in sorted(imgs.iterdir()) for s in spellings]
    (tmp_path / "list.txt").write_text("\n".join(lines + lines[:4]) + "\n")  # 4 lines listed twice
    out = tmp_path / "p.csv"
    cfg = InferConfig(batch=4, workers=0)
    s = run_inference(tmp_path / "list.txt", exported_artifact, out, cfg, progress=False, log=lambda *_: None)
    rows = _csv(out)
    assert sorted(r["path"] for r in rows) == sorted(lines) and s["rows_total"] == 18
    again = run_inference(tmp_path / "list.txt", exported_artifact, out, cfg, progress=False, log=lambda *_: None)
    assert again["predicted_now"] == 0 and len(_csv(out)) == 18


def test_r7_csv_and_jsonl_outputs_of_one_stem_keep_their_own_side_files(exported_artifact, tmp_path):
    """R7: x.csv and x.jsonl shared their meta, skipped, summary and lock files: `--out x.jsonl --overwrite`
    deleted the CSV's meta and skipped list, and resuming the CSV then failed ("x.csv is shorter ...")."""
    imgs = _images(tmp_path / "imgs", 6)
    (imgs / "bad.png").write_bytes(b"not an image")
    args = ["infer", str(imgs), "--artifact", str(exported_artifact), "--workers", "0", "--batch", "2"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "x.csv")]).exit_code == 0
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "x.jsonl"), "--overwrite"])
    assert res.exit_code == 0, res.output
    for side in ("meta.json", "skipped.csv", "summary.json"):
        assert (tmp_path / f"x.csv.{side}").is_file() and (tmp_path / f"x.jsonl.{side}").is_file()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 0 and "6 of 7 files already done" not in res.output, res.output
    assert len(_csv(tmp_path / "x.csv")) == 6 and len(_csv(tmp_path / "x.csv.skipped.csv")) == 1


def test_r9_a_full_disk_while_writing_parquet_names_the_part(exported_artifact, tmp_path, monkeypatch):
    """R9: disk-full errors did not name the file: `Error writing bytes to file` (Parquet) exited right, but
    said neither where nor why. (The CSV case is tests/test_hostile.py's D9.)"""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def full(*a, **k):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    imgs = _images(tmp_path / "imgs", 4)
    res = runner.invoke(app, ["infer", str(imgs), "--artifact", str(exported_artifact), "--workers", "0",
                              "--out", str(tmp_path / "parts")])  # fmt: skip
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert str(tmp_path / "parts" / "part-000000.parquet") in lines[0] and "No space left" in lines[0]


def test_r10_a_server_that_stays_away_is_the_environment_and_is_retried_for_the_whole_window(tmp_path):
    """R10: `infer --server` with the server gone exited 2 (bad input) instead of 1 (environment), and
    `--retry-for 15` gave up after 12 s (the last backoff was skipped instead of shortened)."""
    imgs = _images(tmp_path / "imgs", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    t = time.monotonic()
    res = subprocess.run([*CLI, "infer", str(imgs), "--server", f"grpc://127.0.0.1:{port}", "--retry-for", "3",
                          "--out", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=60)  # fmt: skip
    took = time.monotonic() - t
    assert res.returncode == 1, res.stderr
    assert "did not answer" in res.stderr and "Traceback" not in res.stderr
    assert 3.0 <= took < 20, took
    assert not (tmp_path / "p.csv").exists()  # nothing written before the server answered


def test_resume_reads_no_committed_key_into_memory_and_skips_the_committed_prefix(exported_artifact, tmp_path):
    """The done set lives on disk (p.csv.done.sqlite); a resume checks that the source still starts with the
    committed prefix (by digest) and skips it without lookups; an edited list loses the shortcut, not rows."""
    from toolkit.row_log import PredictionLog
    from toolkit.runner import COLUMNS
    from toolkit.sources import open_source

    imgs = _images(tmp_path / "imgs", 30)
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"imgs/{p.name}\n" for p in sorted(imgs.iterdir())))
    out = tmp_path / "p.csv"
    cfg = InferConfig(batch=4, workers=0)
    run_inference(lst, exported_artifact, out, cfg, progress=False, log=lambda *_: None)
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["counts"] == {"rows": 30, "skipped": 0} and meta["source_prefix"]["items"] == 30
    src = open_source(lst)
    with PredictionLog(out, COLUMNS, meta["identity"], meta["root"]) as plog:
        assert plog._verified_prefix(src) == 30 and list(plog.todo(src)) == []
    lst.write_text("imgs/0000.png\n" + lst.read_text())  # the list no longer starts the same way
    with PredictionLog(out, COLUMNS, meta["identity"], meta["root"]) as plog:
        assert plog._verified_prefix(open_source(lst)) == 0 and list(plog.todo(open_source(lst))) == []


def test_a_lost_or_stale_done_index_is_rebuilt_from_the_output(exported_artifact, tmp_path):
    """The output files are the record: a deleted index, or one behind the output (killed between the two
    commits), is completed from the rows, so nothing is predicted twice."""
    imgs = _images(tmp_path / "imgs", 10)
    out = tmp_path / "p.jsonl"
    cfg = InferConfig(batch=4, workers=0)
    run_inference(imgs, exported_artifact, out, cfg, progress=False, log=lambda *_: None)
    for f in tmp_path.glob("p.jsonl.done.sqlite*"):
        f.unlink()
    again = run_inference(imgs, exported_artifact, out, cfg, progress=False, log=lambda *_: None)
    assert again["predicted_now"] == 0 and again["already_done"] == 10
    assert len(out.read_text().splitlines()) == 10


MEMORY = """
import sys
from pathlib import Path
from toolkit.row_log import PredictionLog
from toolkit.runner import COLUMNS
from toolkit.sources import open_source
n, work = int(sys.argv[1]), Path(sys.argv[2])
lst = work / f"list{n}.txt"
with open(lst, "w") as f:
    for i in range(n):
        f.write(f"shard{i % 97:02d}/image_{i:09d}.jpg\\n")
src = open_source(lst)
out = work / f"p{n}.csv"
import numpy as np
z = {"logit": np.zeros(1, np.float32), "p_generated": np.zeros(1, np.float32), "is_generated": np.zeros(1, bool)}
with PredictionLog(out, COLUMNS, {"test": 1}, src.root) as plog:
    for todo in plog.todo(src):
        rows = [{"path": t.key, "logit": "0", "p_generated": "0.5", "prediction": "real"} for t in todo]
        plog.append(rows, [], [t.chunk for t in todo])
# VmHWM: the peak since this process's exec (ru_maxrss would include the pytest process it was forked from)
print(next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
"""


def test_bookkeeping_memory_is_flat_in_the_number_of_inputs(tmp_path):
    """The real bookkeeping (list streaming, done index, commits) over 2,000 and 200,000 inputs: peak RSS within
    1.2x + 20 MB (0.5 KB per input before, which would be 100 MB more at 200,000)."""
    peaks = []
    for n in (2_000, 200_000):
        res = subprocess.run([sys.executable, "-c", MEMORY, str(n), str(tmp_path)], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        peaks.append(int(res.stdout.split()[-1]) / 1024)  # MB
        assert (tmp_path / f"p{n}.csv").read_bytes().count(b"\n") == n + 1
    assert peaks[1] <= 1.2 * peaks[0] + 20, peaks


def test_done_index_is_exact_within_a_chunk_across_chunks_after_commit_and_after_spilling(tmp_path):
    """The Bloom filter only skips lookups: every duplicate is caught (in one chunk, in flight, committed, spilled
    to disk), and a key never seen is always new, whatever the filter's false positives."""
    from toolkit.done_index import DoneIndex

    d = DoneIndex(tmp_path / "i.sqlite")
    assert d.open() is None
    d.in_flight.limit = 3  # spill to the temporary table early
    d.start(expected=10)
    assert d.claim(["a", "b", "a"]) == [True, True, False]
    assert d.claim(["b", "c", "d", "e"]) == [False, True, True, True]  # b in flight; the set spilled after d
    assert d.in_flight.spilled and "a" in d.in_flight and "zz" not in d.in_flight
    d.add(["a", "b", "c"], {"predictions": 10})
    assert d.claim(["a", "c", "f", "e"]) == [False, False, True, False]
    d.close()
    again = DoneIndex(tmp_path / "i.sqlite")
    assert again.open() == {"predictions": 10}
    again.start(expected=10)  # committed keys are loaded into the filter
    assert again.claim(["a", "b", "c", "d", "e", "f"]) == [False, False, False, True, True, True]
    fresh = [f"k{i}" for i in range(5000)]
    assert all(again.claim(fresh))  # false positives of the filter are checked, never taken as done
