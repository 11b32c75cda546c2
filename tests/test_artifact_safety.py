"""The artifact and the files around it (R3-R6, R8, R11): nothing outside is read or followed, every manifest field
is checked, a killed writer leaves nothing that breaks the next command. Each test names the defect it guards."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.artifact import MANIFEST, Artifact, ArtifactError, _seal
from toolkit.cli import app

runner = CliRunner()


@pytest.fixture
def art(exported_artifact, tmp_path):
    shutil.copytree(exported_artifact, tmp_path / "art")
    return tmp_path / "art"


def reseal(d, mutate) -> None:
    """Rewrite d's manifest as a tool that knows the format would: mutated, then sealed again."""
    m = json.loads((d / MANIFEST).read_text())
    m.pop("integrity")
    mutate(m)
    (d / MANIFEST).write_text(json.dumps(_seal(m)))


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


# ---- R3: precision files outside the artifact or not hashed ------------------------------------------------
@pytest.mark.parametrize("name", ["/tmp/outside.onnx", "../outside.onnx", "sub/../../outside.onnx"])
def test_r3_precision_file_outside_or_unlisted_is_refused_by_every_command(art, toy_data, tmp_path, name):
    """R3: `precisions.fp32.file` re-sealed to an absolute / '..' path not in `files` was loaded by bench, eval and
    threshold, copied by triton-repo, and crashed infer and serve with a KeyError traceback."""
    outside = tmp_path / "outside.onnx"
    shutil.copy(art / "detector.fp32.onnx", outside)
    reseal(art, lambda m: m["precisions"]["fp32"].update(file=name))
    imgs = toy_data / "gan_b"
    commands = [
        ["bench", str(art), "--engine", "onnxruntime", "--parity-n", "2"],
        ["eval", str(art), str(imgs)],
        ["threshold", str(art), str(imgs), "--best-acc", "--dry-run"],
        ["triton-repo", str(art), "--out", str(tmp_path / "repo")],
        ["infer", str(imgs), "--artifact", str(art), "--out", str(tmp_path / "p.csv")],
        ["serve", str(art), "--grpc-port", "1", "--http-port", "2", "--metrics-port", "3"],
    ]
    for cmd in commands:
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, (cmd, res.output)
        assert "field precisions.fp32.file" in one_line(res.output), (cmd, res.output)
    assert not (tmp_path / "repo").exists()


def test_r3_a_precision_file_must_be_hashed(art):
    """R3: a name inside the artifact that `files` does not list (so nobody hashed it) is refused too."""
    reseal(art, lambda m: m["precisions"]["fp32"].update(file="extra.onnx"))
    (art / "extra.onnx").write_bytes((art / "detector.fp32.onnx").read_bytes())
    with pytest.raises(ArtifactError, match=r"precisions\.fp32\.file: 'extra\.onnx' is not listed"):
        Artifact.open(art)


# ---- R4: links planted at an output's side files -------------------------------------------------------------
@pytest.mark.parametrize("side", ["lock", "skipped", "meta", "summary", "predictions"])
def test_r4_a_link_at_a_side_file_is_refused_and_its_target_untouched(exported_artifact, tmp_path, side):
    """R4: a symlink at <out>.lock was followed (O_CREAT, ftruncate, pid written) and truncated its target; the
    same held for the skipped list, meta and summary files."""
    from toolkit.row_log import OutputPaths

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(imgs / "a.png")
    out = tmp_path / "p.csv"
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = getattr(OutputPaths.for_file(out), side)
    os.symlink(target, link)
    res = runner.invoke(app, ["infer", str(imgs), "--artifact", str(exported_artifact), "--out", str(out),
                              "--workers", "0"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "is a symbolic link" in one_line(res.output) and str(link) in res.output
    assert target.read_text() == "keep me\n" and os.path.islink(link)


# ---- R5: links inside the artifact -------------------------------------------------------------------------------
def test_r5_a_listed_file_linked_to_an_outside_copy_is_refused(art, tmp_path):
    """R5: a listed file replaced by a link to an outside copy with the same bytes was accepted."""
    outside = tmp_path / "copy.onnx"
    shutil.copy(art / "detector.fp16.onnx", outside)
    (art / "detector.fp16.onnx").unlink()
    os.symlink(outside, art / "detector.fp16.onnx")
    with pytest.raises(ArtifactError, match=r"detector\.fp16\.onnx is a symbolic link"):
        Artifact.open(art)


def test_r5_a_linked_directory_holding_a_listed_file_is_refused(art, tmp_path):
    """R5: a symlinked directory with a re-sealed `sub/other.onnx` was loaded."""
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(art / "detector.fp16.onnx", tmp_path / "elsewhere" / "other.onnx")
    os.symlink(tmp_path / "elsewhere", art / "sub")
    digest = json.loads((art / MANIFEST).read_text())["files"]["detector.fp16.onnx"]
    reseal(art, lambda m: (m["files"].update({"sub/other.onnx": digest}),
                                m["precisions"]["fp16"].update(file="sub/other.onnx")))  # fmt: skip
    with pytest.raises(ArtifactError, match="sub is a symbolic link"):
        Artifact.open(art)


@pytest.mark.parametrize("where", ["rootlink", "plans"])
def test_r5_an_unlisted_directory_link_is_reported(art, where):
    """R5: an unlisted directory link (`rootlink -> /`) was not reported; nor is a plan cache that is a link."""
    os.symlink("/", art / where)
    with pytest.raises(ArtifactError, match=f"{where} is a symbolic link"):
        Artifact.open(art)


# ---- R6: the server's log file --------------------------------------------------------------------------------------
def test_r6_the_default_server_log_cannot_be_planted(tmp_path, monkeypatch):
    """R6: /tmp/toolkit-serve-<grpc port>.log was predictable, and a link planted there got 4,206 bytes appended."""
    import tempfile

    from toolkit.safe_paths import SymlinkRefused
    from toolkit.serving.server import prepare_log_file

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    target = tmp_path / "victim.txt"
    target.write_text("victim\n")
    os.symlink(target, tmp_path / "toolkit-serve-8001.log")  # the old, guessable name
    log = prepare_log_file(None, 8001)
    assert os.path.dirname(log) != str(tmp_path) and not os.path.islink(log)
    assert oct(os.stat(os.path.dirname(log)).st_mode & 0o777) == "0o700"
    assert target.read_text() == "victim\n"
    with pytest.raises(SymlinkRefused, match="is a symbolic link"):
        prepare_log_file(str(tmp_path / "toolkit-serve-8001.log"), 8001)
    assert target.read_text() == "victim\n"


# ---- R8: malformed manifests are one line naming the file and the field --------------------------------------------
@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.update(files=list(m["files"])), "files"),
        (lambda m: m.pop("precisions"), "precisions"),
        (lambda m: m.update(threshold="abc"), "threshold"),
        (lambda m: m["preprocess"].update(size="224"), "preprocess.size"),
        (lambda m: m["inputs"][0].update(dtype="float128"), "inputs[0].dtype"),
        (lambda m: m["files"].update({"detector.fp32.onnx": "xyz"}), "files['detector.fp32.onnx']"),
    ],
)
def test_r8_malformed_manifest_fields_are_one_line_naming_file_and_field(art, toy_data, tmp_path, mutate, field):
    """R8: `files` as a list (AttributeError, 50 lines), `precisions` missing (KeyError, 47 lines), and a threshold
    of "abc" (a line not naming the file) ended in tracebacks or vague messages."""
    reseal(art, mutate)
    res = runner.invoke(app, ["infer", str(toy_data), "--artifact", str(art), "--out", str(tmp_path / "p.csv")])
    line = one_line(res.output)
    assert res.exit_code == 2 and str(art / MANIFEST) in line and f"field {field}" in line, res.output


def _mutations(m: dict) -> list[tuple[str, object]]:
    """(description, mutate function) covering types, names, missing and extra fields, every top-level field."""
    values = [None, 0, 1.5, True, "x", [], {}, ["a"], {"a": 1}, "../x", "/etc/passwd"]
    out = []
    for key in list(m):
        out.append((f"del {key}", lambda d, k=key: d.pop(k)))
        for v in values:
            out.append((f"{key}={v!r}", lambda d, k=key, v=v: d.update({k: copy.deepcopy(v)})))
    for p in m["precisions"]:
        for sub in ("file", "data_file", "engines", "execution"):
            for v in [*values, "detector.fp16.onnx", "manifest.json", "plans/x.onnx", "a/./b.onnx", "a\\b.onnx"]:
                out.append((f"precisions.{p}.{sub}={v!r}",
                            lambda d, p=p, s=sub, v=v: d["precisions"][p].update({s: copy.deepcopy(v)})))  # fmt: skip
    for name in ["../x.onnx", "/abs.onnx", "", ".", "a/../b", "manifest.json", "bench/r.json"]:
        out.append((f"files[{name!r}]", lambda d, n=name: d["files"].update({n: "0" * 64})))
    for key in ("size", "mean", "std", "interpolation", "resize_mode"):
        for v in [*values, -1, [0.1, 0.2], [0.0, 0.0, 0.0], "nearest"]:
            out.append((f"preprocess.{key}={v!r}", lambda d, k=key, v=v: d["preprocess"].update({k: copy.deepcopy(v)})))
    for v in [*values, [{"name": "x", "shape": [], "dtype": "float32"}], [{"name": "x", "shape": [0], "dtype": "x"}]]:
        out.append((f"inputs={v!r}", lambda d, v=v: d.update(inputs=copy.deepcopy(v))))
    out.append(("extra field", lambda d: d.update(added_by_a_newer_toolkit={"x": 1})))
    out.append(("gates.fp32.passed='yes'", lambda d: d["gates"]["fp32"].update(passed="yes")))
    return out


@pytest.fixture
def opened_paths():
    """Paths opened by this process while collecting (an audit hook: builtins.open and os.open both report)."""
    if not hasattr(sys, "_toolkit_open_log"):
        sys._toolkit_open_log = None

        def hook(event, args):
            if event == "open" and sys._toolkit_open_log is not None and isinstance(args[0], (str, bytes, os.PathLike)):
                sys._toolkit_open_log.append(os.fsdecode(args[0]))

        sys.addaudithook(hook)
    sys._toolkit_open_log = []
    yield sys._toolkit_open_log
    sys._toolkit_open_log = None


def test_every_resealed_mutation_is_refused_in_one_line_or_opens_and_reads_nothing_outside(art, opened_paths):
    """Property: every mutation of the manifest, re-sealed, is an ArtifactError (one line) or an artifact whose
    typed fields all work; in both cases no file outside the artifact directory is opened."""
    pristine = (art / MANIFEST).read_text()
    base = json.loads(pristine)
    base.pop("integrity")
    opened, refused = 0, 0
    for desc, mutate in _mutations(base):
        (art / MANIFEST).write_text(pristine)
        try:
            reseal(art, mutate)
        except (KeyError, TypeError, AttributeError):
            continue  # the mutation does not apply to this manifest (e.g. a field that is already absent)
        opened_paths.clear()
        try:
            a = Artifact.open(art)
            _ = (a.kind, a.preprocess, a.inputs, a.outputs, a.threshold, a.model_name, a.seal, a.gates)
            _ = [(a.onnx_path(p), a.onnx_sha256(p)) for p in a.precisions]
            opened += 1
        except ArtifactError as e:
            assert "\n" not in str(e) and str(art) in str(e), (desc, str(e))
            refused += 1
        except Exception as e:  # anything else is a traceback for the user
            pytest.fail(f"{desc}: {type(e).__name__}: {e}")
        root = os.path.realpath(art)
        # relative names are opened by open_inside, relative to a directory descriptor inside the artifact
        outside = [p for p in opened_paths if os.path.isabs(p) and not (os.path.realpath(p) + os.sep).startswith(
            root + os.sep)]  # fmt: skip
        assert not [p for p in outside if not p.startswith(sys.prefix) and "site-packages" not in p], (desc, outside)
    assert refused > 100 and opened >= 2, (refused, opened)


# ---- R11: what a killed export leaves behind -------------------------------------------------------------------------
def test_r11_a_killed_exports_staging_is_removed_by_the_next_but_a_live_one_is_kept(trained_run, tmp_path):
    """R11: a SIGKILLed `toolkit export` left a hidden .<out>.staging-* directory that the next export did not
    remove. A staging directory whose owner still runs (holds its lock) must survive."""
    out = tmp_path / "art"
    code = ("import sys, time; sys.argv[1:] = ['export', sys.argv[1], '--out', sys.argv[2]]\n"
            "from toolkit.cli import main; main()")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(trained_run), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    stagings = []
    for _ in range(600):
        stagings = [p for p in tmp_path.iterdir() if p.name.startswith(".art.staging-")]
        if stagings and any((s / "detector.fp32.onnx").exists() for s in stagings):
            break
        if proc.poll() is not None:
            break
        import time

        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert stagings, "the export finished before it could be killed"
    live = tmp_path / ".art.staging-1-live"  # owned by a process that holds its lock (this test)
    live.mkdir()
    from toolkit.locks import try_lock

    fd = try_lock(live / ".owner")
    res = runner.invoke(app, ["export", str(trained_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".art."))
    assert left == [".art.staging-1-live"], left
    os.close(fd)
    Artifact.open(out)


@pytest.mark.parametrize("command", ["calibrate", "export"])
def test_a_writer_killed_at_random_moments_leaves_a_usable_artifact_and_no_temporary_file(
    command, art, trained_run, toy_data, tmp_path
):
    """Issue 25: a SIGKILLed calibrate left a 0-byte `.detector.int8.onnx.<random>.tmp` inside the artifact (every
    later command refused it) and 1.2 GB of onnxruntime's `ort.quant.*` in $TMPDIR. Kill moments are drawn (seeded)
    over the length of a full run; after each kill the artifact opens and holds exactly its listed files, $TMPDIR
    holds no file of ours (what any killed Python using these libraries leaves: multiprocessing's empty `pymp-*`
    directory, and onnxruntime's 51-byte `.ses` written at import under one fixed name), and the next run removes
    what the killed ones left beside the artifact."""
    import signal
    import time

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    args = {
        "calibrate": ["calibrate", str(art), "--images", str(toy_data / "gan_a"), "--eval-images",
                      str(toy_data / "gan_b"), "--workers", "0", "--calib-n", "16", "--no-vnni-n", "8"],
        "export": ["export", str(trained_run), "--out", str(art)],
    }[command]  # fmt: skip
    cmd = [sys.executable, "-c", "import sys; from toolkit.cli import main; sys.argv[0] = 'toolkit'; main()", *args]

    def full_run() -> float:
        t = time.monotonic()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return time.monotonic() - t

    def check() -> None:
        a = Artifact.open(art)
        top = {p.name for p in art.iterdir() if p.name not in ("bench", "plans")}
        assert top == {*a.files, MANIFEST}, top ^ {*a.files, MANIFEST}
        left = [p for p in tmpdir.rglob("*") if not (p.is_dir() and p.name.startswith("pymp-")) and p.name != ".ses"]
        assert not left, left

    length = full_run()
    check()
    killed = 0
    for delay in np.random.default_rng(25).uniform(0.15, 0.95, 2) * length:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        check()
    assert killed >= 1, "the runs finished before they could be killed"
    full_run()
    check()
    assert not [p.name for p in art.parent.iterdir() if p.name.startswith(".art.")], "a killed run's staging is left"
