"""The defects an independent hostile-input, kill and fault test found on 614e41a (issue 12, D1-D13), one test
each (some cover two). Every test here failed on 614e41a."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupting
from PIL import Image
from typer.testing import CliRunner

from toolkit.artifact import Artifact, ArtifactError
from toolkit.cli import app
from toolkit.pipelines.infer import InferConfig, run_inference
from toolkit.row_log import ResumeError

CLI = [sys.executable, "-c", "from toolkit.cli import main; main()"]
runner = CliRunner()


def _images(root: Path, n: int, size: int = 40, names=None) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        name = names[i] if names else f"{i:04d}.png"
        p = root / name if isinstance(name, str) else Path(os.fsdecode(os.path.join(os.fsencode(root), name)))
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p, format="PNG")
        out.append(p)
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return list(csv.DictReader(f))


def _one_error_line(output: str) -> str:
    """No traceback, and exactly one `error:` line, the last one (a progress bar may come before it)."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert "Traceback" not in output, output
    assert len(errors) == 1 and lines[-1] == errors[0], output
    return errors[0]


# D1 (+ D12's names): any name the OS can hold is predicted and written losslessly, in both formats
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_d1_names_that_are_not_utf8_are_predicted_and_written_losslessly(exported_artifact, tmp_path, fmt):
    names = [b"latin1-\xe9t\xe9.png", b"bad-\xff\xfe.png", 'quote"comma,.png', "new\nline.png", "ok.png"]
    _images(tmp_path / "imgs", len(names), names=names)
    out = tmp_path / f"p.{fmt}"
    s = run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(workers=0), progress=False)
    rows = _jsonl(out) if fmt == "jsonl" else _csv(out)
    want = sorted(n if isinstance(n, str) else os.fsdecode(n) for n in names)
    assert sorted(r["path"] for r in rows) == want and s["rows_total"] == 5
    assert {os.fsencode(r["path"]) for r in rows} >= {b"latin1-\xe9t\xe9.png", b"bad-\xff\xfe.png"}  # the bytes
    if fmt == "jsonl":
        out.read_bytes().decode("ascii")  # escaped: strict UTF-8 (even ASCII) consumers can read it
    res = runner.invoke(app, ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact),
                              "--out", str(out), "--workers", "0"])  # fmt: skip
    assert res.exit_code == 0 and "5 already done" in res.output, res.output  # resumes: the keys round-trip


# D2: a second run on the same --out is refused at once, while the first goes on
def test_d2_second_run_on_the_same_output_is_refused(exported_artifact, tmp_path, monkeypatch):
    import threading

    import toolkit.data.loader as loader

    _images(tmp_path / "imgs", 12)
    real, release = loader.item_batches, threading.Event()

    def slow(*a, **k):  # the first run holds its output until the second has been refused
        for i, b in enumerate(real(*a, **k)):
            yield b
            if i == 0:
                release.wait(60)

    monkeypatch.setattr(loader, "item_batches", slow)
    out = tmp_path / "p.jsonl"
    first = threading.Thread(
        target=run_inference,
        args=(tmp_path / "imgs", exported_artifact, out, InferConfig(batch=4, workers=0)),
        kwargs={"progress": False},
    )
    first.start()
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_file() and out.stat().st_size > 0):
        time.sleep(0.01)
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(out)]
    res = subprocess.run([*CLI, *args, "--workers", "0"], capture_output=True, text=True, timeout=120)
    release.set()
    first.join(60)
    assert res.returncode == 2 and "being written by another run" in _one_error_line(res.stderr)
    rows = _jsonl(out)
    assert len(rows) == len({r["path"] for r in rows}) == 12  # the first run finished; no row written twice


# D3: rows are keyed relative to the root; the same folder spelled differently resumes, another is refused
def test_d3_same_folder_spelled_differently_resumes_another_folder_is_refused(exported_artifact, tmp_path, monkeypatch):
    import toolkit.data.loader as loader

    _images(tmp_path / "imgs", 12)
    real = loader.item_batches

    out = tmp_path / "p.csv"
    monkeypatch.setattr(loader, "item_batches", interrupting(real, 2))
    with pytest.raises(KeyboardInterrupt):
        run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(batch=4, workers=0), progress=False)
    monkeypatch.setattr(loader, "item_batches", real)
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    s = run_inference(Path("link/../imgs/./"), exported_artifact, out, InferConfig(workers=0), progress=False)
    assert s["already_done"] == 8 and s["predicted_now"] == 4 and s["rows_total"] == 12
    assert sorted(r["path"] for r in _csv(out)) == [f"{i:04d}.png" for i in range(12)]
    _images(tmp_path / "other", 3)
    with pytest.raises(ResumeError, match=r"holds predictions for .*imgs"):
        run_inference(tmp_path / "other", exported_artifact, out, InferConfig(workers=0), progress=False)


# D4: nothing is written until the artifact and the engine have opened
@pytest.mark.parametrize("bad", [["--engine", "trt"], ["--precision", "int4"], ["--engine", "tensorflow"]])
def test_d4_a_run_that_cannot_start_writes_nothing(exported_artifact, tmp_path, bad):
    _images(tmp_path / "imgs", 3)
    out = tmp_path / "o" / "p.csv"
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(out), "--workers", "0"]
    res = subprocess.run([*CLI, *args, *bad], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    res = runner.invoke(app, args)  # the corrected command runs
    assert res.exit_code == 0 and "3 predicted" in res.output, res.output


# D5: the manifest protects itself, and every file in the artifact is listed
def test_d5_edited_manifest_and_unlisted_files_are_refused_naming_the_field(exported_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    original = (art / "manifest.json").read_text()
    m = json.loads(original)
    m["threshold"] += 0.5  # still valid JSON, a plausible edit
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"'threshold' changed"):
        Artifact.open(art)
    m = json.loads(original)
    del m["files"]["detector.fp16.onnx"]
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"files\['detector.fp16.onnx'\] removed"):
        Artifact.open(art)
    (art / "manifest.json").write_text(original)
    (art / "extra.onnx").write_bytes(b"not listed")
    with pytest.raises(ArtifactError, match=r"extra\.onnx is in the artifact but not listed"):
        Artifact.open(art)
    (art / "extra.onnx").unlink()
    assert Artifact.open(art).threshold == json.loads(original)["threshold"]
    res = runner.invoke(app, ["infer", str(tmp_path), "--artifact", str(art), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0  # the untouched artifact runs
    (art / "manifest.json").write_text(json.dumps({**json.loads(original), "threshold": 9.0}))
    res = runner.invoke(app, ["infer", str(tmp_path), "--artifact", str(art), "--out", str(tmp_path / "q.csv")])
    assert res.exit_code == 2 and "'threshold' changed" in res.output


# D6: the fp16 file opens in a default onnxruntime session: the graph is fixed, not the consumer
def test_d6_fp16_graph_opens_in_a_default_onnxruntime_session(exported_artifact):
    import onnx

    from export.graph_passes import sink_transpose_below_matmul
    from export.ort_repro.fp16_transpose_matmul import graph, open_status

    model = onnx.load(str(exported_artifact / "detector.fp16.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    crashing = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and getattr(producer.get(n.input[0]), "op_type", "") == "Transpose"
    ]
    assert not crashing, f"Transpose -> MatMul(constant) left in the fp16 graph: {crashing}"
    assert open_status(model) == 0  # a child process with a default session (a segfault would be -11)
    repro = graph(transpose_first=True)
    assert sink_transpose_below_matmul(repro) == 1 and open_status(repro) == 0


def _children(pid: int) -> set[int]:
    kids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.add(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# D7: killing only the main process leaves no decode worker (nor the resource tracker) behind
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_d7_decode_workers_die_with_a_killed_main_process(exported_artifact, tmp_path):
    _images(tmp_path / "imgs", 400)
    out = tmp_path / "p.jsonl"
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(out)]
    proc = subprocess.Popen([*CLI, *args, "--batch", "2", "--workers", "2"], stderr=subprocess.DEVNULL)
    deadline, kids = time.time() + 120, set()
    while time.time() < deadline and proc.poll() is None:
        kids = _children(proc.pid)
        if len(kids) >= 3 and out.is_file() and out.stat().st_size > 0:  # 2 workers + the resource tracker
            break
        time.sleep(0.02)
    assert len(kids) >= 3, "the run ended before its workers were seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if _alive(k)]
    cmdlines = [Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ")[:150] for k in left]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert not left, f"{len(left)} child process(es) outlived the killed infer: {cmdlines}"


# D8: only regular files are read: a FIFO and a symlink to /dev/zero named *.png are skipped with reasons
def test_d8_fifos_and_devices_are_skipped_not_read(exported_artifact, tmp_path):
    _images(tmp_path / "imgs", 2)
    os.mkfifo(tmp_path / "imgs" / "fifo.png")
    (tmp_path / "imgs" / "zero.png").symlink_to("/dev/zero")
    out = tmp_path / "p.csv"
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(out), "--workers", "1"]
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)  # a hang fails, not blocks
    assert res.returncode == 0, res.stderr
    skipped = {r["path"]: r["reason"] for r in _csv(tmp_path / "p.csv.skipped.csv")}
    assert "not a regular file (a FIFO)" in skipped["fifo.png"]
    assert "not a regular file (a character device)" in skipped["zero.png"]
    assert len(_csv(out)) == 2


def test_d8_size_is_checked_before_reading(tmp_path):
    from toolkit.data.images import ImageDecodeError, read_file

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageDecodeError, match="file too large: 4096 bytes exceeds the limit of 1000"):
        read_file(big, max_bytes=1000)


# D9: one-line errors: --out is a directory (exit 2), disk full (exit 1), Ctrl-C with decode workers (no traceback)
def test_d9_out_is_a_directory_and_disk_full_are_one_line(exported_artifact, tmp_path, monkeypatch):
    _images(tmp_path / "imgs", 6)
    (tmp_path / "dir.csv").mkdir()
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--workers", "0", "--batch", "2"]
    res = subprocess.run([*CLI, *args, "--out", str(tmp_path / "dir.csv")], capture_output=True, text=True)
    assert res.returncode == 2 and "is a directory" in _one_error_line(res.stderr)

    import toolkit.row_log as row_log

    real_open, writes = open, []

    class FullDisk:
        """A file whose 5th write fails as the OS reports it: ENOSPC, no file name (R9: the error must name it)."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            writes.append(1)
            if len(writes) > 4:  # headers, then two batches, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(row_log, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    out = tmp_path / "p.csv"
    res = runner.invoke(app, [*args, "--out", str(out)])
    line = _one_error_line(res.output)
    assert res.exit_code == 1 and "No space left on device" in line and str(out) in line, res.output
    monkeypatch.delattr(row_log, "open")
    kept = len(_csv(out))
    assert kept >= 2
    res = runner.invoke(app, [*args, "--out", str(out)])  # space again: resumes, nothing lost or doubled
    assert res.exit_code == 0 and f"{kept} already done" in res.output
    assert sorted(r["path"] for r in _csv(out)) == [f"{i:04d}.png" for i in range(6)]


def test_d9_ctrl_c_with_decode_workers_prints_no_traceback(exported_artifact, tmp_path):
    _images(tmp_path / "imgs", 400)
    out = tmp_path / "p.jsonl"
    args = ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(out)]
    proc = subprocess.Popen(
        [*CLI, *args, "--batch", "2", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # ... where Ctrl-C has its default action: a test run started in the background (`cmd &` in a script)
        # ignores SIGINT, its children inherit that, and the run then finished and exited 0 (seen on a clone)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_file() and out.stat().st_size > 0):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group, workers included
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert b"Traceback" not in stderr and b"KeyboardInterrupt" not in stderr, stderr.decode()
    assert b"run the same command to resume" in stdout


# D10: purify mirrors relative paths and never overwrites; its skipped.csv is real CSV
def test_d10_purify_keeps_every_output_and_writes_csv(purifier_artifact, tmp_path):
    from toolkit.pipelines.purify import run_purify

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for name in ("pic.bmp", "pic.webp", "pic.png", "sub/pic.png"):
        img.save(src / name)
    (src / 'say "hi", then.png').write_bytes(b"not an image")
    s = run_purify(src, purifier_artifact, tmp_path / "out", workers=0, progress=False)
    made = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert made == ["pic.bmp.png", "pic.png.png", "pic.webp.png", "sub/pic.png.png"] and s["purified_now"] == 4
    skipped = _csv(tmp_path / "out" / "skipped.csv")
    assert [r["path"] for r in skipped] == [str(src / 'say "hi", then.png')] and "not a recognised" in skipped[0][
        "reason"
    ]


# D11: the source run is recorded resolved; a missing reference fails loudly unless --no-reference
def test_d11_reference_is_found_from_anywhere_and_its_absence_is_loud(trained_run, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "causal"
    shutil.copytree(trained_run, run)
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["export", "runs/causal", "--out", "art"]).exit_code == 0
    assert Path(Artifact.open(tmp_path / "art").manifest["source_run"]) == run.resolve()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    bench = ["bench", str(tmp_path / "art"), "--batch", "1", "--iterations", "2", "--warmup", "0", "--parity-n", "4"]
    res = runner.invoke(app, [*bench, "--out", "b1"])
    assert res.exit_code == 0, res.output
    assert json.loads(Path("b1/bench.json").read_text())["targets"]["torch/fp32"]["status"] == "ok"
    shutil.move(run, tmp_path / "moved")
    res = runner.invoke(app, [*bench, "--out", "b2"])
    assert res.exit_code == 2 and "--no-reference" in _one_error_line(res.output), res.output
    res = runner.invoke(app, [*bench, "--out", "b3", "--no-reference"])
    assert res.exit_code == 0, res.output
    assert json.loads(Path("b3/bench.json").read_text())["reference"] == "onnxruntime/fp32"


# D12: a kill in the middle of a row whose name holds a newline leaves no garbage row after resume
def test_d12_torn_row_with_a_newline_in_the_name_is_cut_on_resume(exported_artifact, tmp_path):
    _images(tmp_path / "imgs", 4, names=["a.png", "b\nc.png", "d.png", "e.png"])
    out = tmp_path / "p.csv"
    run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(workers=0, batch=2), progress=False)
    rows = _csv(out)
    # as if killed while writing one more batch: the first bytes of a quoted name, across its newline
    with open(out, "ab") as f:
        f.write(b'"x\ny.png",0.1')
    s = run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(workers=0), progress=False)
    assert s["already_done"] == 4 and s["predicted_now"] == 0
    assert _csv(out) == rows


# D13: fractional eps is refused (it cannot be honoured on the 8-bit grid); an empty folder warns
def test_d13_fractional_eps_is_refused_and_an_empty_folder_warns(trained_run, toy_data, exported_artifact, tmp_path):
    from toolkit.attacks import PGDConfig

    for eps in (0.5, 2.5):
        with pytest.raises(ValueError, match="whole number of 8-bit steps"):
            PGDConfig(eps=eps)
    res = runner.invoke(app, ["attack", str(toy_data / "gan_a"), "--run", str(trained_run), "--eps", "0.5",
                              "--out", str(tmp_path / "pairs")])  # fmt: skip
    assert res.exit_code == 2 and "whole number of 8-bit steps" in _one_error_line(res.output)
    assert not (tmp_path / "pairs").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    res = runner.invoke(app, ["infer", str(tmp_path / "empty"), "--artifact", str(exported_artifact),
                              "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert res.exit_code == 0 and "has no image files (1 other files ignored)" in res.output
