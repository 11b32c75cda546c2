"""toolkit/artifact.py on a hand-built artifact (no model): the seal's exact refusals, opening's checks in order,
the typed accessors (operating points, thresholds, the reference run), and a staged edit. Fast, for
`make mutation`; tests/test_artifact_safety.py attacks real exported artifacts."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from toolkit import artifact as artifact_mod
from toolkit.artifact import (
    FORMAT,
    MANIFEST,
    Artifact,
    ArtifactError,
    ReferenceMissing,
    _digest,
    _field_digests,
    seal_digest,
    tool_versions,
)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _body(run=None):
    return {
        "kind": "detector",
        "precisions": {"fp32": {"file": "m.fp32.onnx"}, "int8": {"file": "m.int8.onnx", "data_file": "m.int8.data"}},
        "inputs": [{"name": "images", "shape": ["batch", 3, 8, 8], "dtype": "float32"}],
        "outputs": [{"name": "logit", "shape": ["batch"], "dtype": "float32"}],
        "preprocess": {"size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "threshold": 1.0,
        "gates": {"int8": {"passed": True}},
        "model_name": "tiny",
        **({"source_run": str(run), "source_sha256": _sha(b"weights")} if run else {}),
    }


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    for name, data in (("m.fp32.onnx", b"fp32"), ("m.int8.onnx", b"int8"), ("m.int8.data", b"data")):
        (d / name).write_bytes(data)
    run = tmp_path / "run"
    run.mkdir()
    (run / "head.pt").write_bytes(b"weights")
    return Artifact.write(d, _body(run))


def _manifest(a) -> dict:
    return json.loads((a.dir / MANIFEST).read_text())


def _rewrite(a, m):
    (a.dir / MANIFEST).write_text(json.dumps(m))


def test_written_manifest_is_sealed_field_by_field(art):
    """Bugs: a field or a nested entry left out of the seal, or the digest not canonical JSON."""
    m = _manifest(art)
    assert m["format"] == FORMAT == "causal-deploy-toolkit/artifact@2"
    assert m["files"] == {"m.fp32.onnx": _sha(b"fp32"), "m.int8.onnx": _sha(b"int8"), "m.int8.data": _sha(b"data")}
    fields = m["integrity"]["fields"]
    assert m["integrity"]["algorithm"] == "sha256 of canonical JSON"
    assert fields["threshold"] == _sha(b"1.0") and fields["precisions/int8"] == _digest(m["precisions"]["int8"])
    assert fields["files/m.int8.data"] == _sha(json.dumps(_sha(b"data")).encode())
    assert "preprocess/size" not in fields  # only files, precisions and gates are sealed one level deep
    assert _field_digests({"gates": {"a": 1}, "x": [1]}) == {
        "gates": _digest({"a": 1}),
        "gates/a": _digest(1),
        "x": _digest([1]),
    }
    assert _digest({"b": 1, "a": "é"}) == _sha(b'{"a":"\\u00e9","b":1}')
    opened = Artifact.open(art.dir)
    assert opened.manifest == art.manifest and "integrity" not in opened.manifest
    assert opened.seal == seal_digest(art.manifest) == _digest(art.manifest)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m.update(threshold=2.0), "'threshold' changed"),
        (lambda m: m.pop("model_name"), "'model_name' removed"),
        (lambda m: m.update(extra=1), "'extra' added"),
        (lambda m: m["gates"]["int8"].update(passed=False), "gates['int8'] changed"),
        (lambda m: m["gates"].pop("int8"), "gates['int8'] removed"),
        (lambda m: m["gates"].update(fp16={}), "gates['fp16'] added"),
        (lambda m: m["files"].update({"m.fp32.onnx": "0" * 64}), "files['m.fp32.onnx'] changed"),
    ],
)
def test_an_edited_manifest_is_refused_naming_the_field(art, edit, problem):
    """Bugs: an edit not detected, or the message naming the dict instead of its entry."""
    m = _manifest(art)
    edit(m)
    _rewrite(art, m)
    with pytest.raises(ArtifactError) as e:
        Artifact.open(art.dir)
    assert str(e.value) == (
        f"{art.dir / MANIFEST} was edited after the toolkit wrote it ({problem}): refusing to run "
        "it; re-export, or use the toolkit's own commands (calibrate, threshold) to change an "
        "artifact"
    )


def test_opening_refuses_in_one_line(art, tmp_path):
    """Bugs: any of open's checks dropped or its message garbled."""
    path = art.dir / MANIFEST
    m = _manifest(art)
    with pytest.raises(ArtifactError, match=r"is not a directory; run 'toolkit export' first$"):
        Artifact.open(tmp_path / "nothing")
    _rewrite(art, {k: v for k, v in m.items() if k != "integrity"})
    with pytest.raises(ArtifactError, match=r"has no integrity record: refusing a manifest that was not written"):
        Artifact.open(art.dir)
    _rewrite(art, {**m, "integrity": {"fields": []}})
    with pytest.raises(ArtifactError, match="has no integrity record"):
        Artifact.open(art.dir)
    _rewrite(art, {**m, "format": "causal-deploy-toolkit/artifact@1"})
    with pytest.raises(
        ArtifactError,
        match=r"unknown artifact format 'causal-deploy-toolkit/artifact@1' \(want "
        r"causal-deploy-toolkit/artifact@2\); re-export it$",
    ):
        Artifact.open(art.dir)
    _rewrite(art, [1])
    with pytest.raises(ArtifactError, match=r"unknown artifact format None"):
        Artifact.open(art.dir)
    path.write_bytes(b"\xff{")
    with pytest.raises(ArtifactError, match=r"manifest.json is not valid JSON: "):
        Artifact.open(art.dir)
    path.unlink()
    with pytest.raises(ArtifactError, match=rf"{art.dir} has no manifest.json; run 'toolkit export' first$"):
        Artifact.open(art.dir)
    path.mkdir()
    with pytest.raises(ArtifactError, match=r"manifest.json is not a regular file$"):
        Artifact.open(art.dir)
    path.rmdir()
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ArtifactError, match="link"):
        Artifact.open(art.dir)


def test_a_schema_error_is_an_artifact_error(art):
    m = _manifest(art)
    body = {k: v for k, v in m.items() if k != "integrity"}
    body["kind"] = "other"
    _rewrite(art, artifact_mod._seal(body))
    with pytest.raises(ArtifactError, match=r"field kind: 'other' is not a model kind"):
        Artifact.open(art.dir)
    with pytest.raises(ArtifactError, match=r"^refusing to write it: .*field threshold: must be a number"):
        Artifact.write(art.dir, {**_body(), "threshold": "x"})


def test_files_are_verified(art):
    """Bugs: a missing, changed, unlisted or linked file let through; the unlisted caches refused."""
    (art.dir / "plans").mkdir()
    (art.dir / "plans" / "x.plan").write_bytes(b"p")
    (art.dir / "bench").mkdir()
    (art.dir / "tuning").mkdir()
    (art.dir / "tuning" / "r.json").write_text("{}")
    Artifact.open(art.dir)
    (art.dir / "m.int8.data").write_bytes(b"DATA")
    with pytest.raises(ArtifactError, match=r"m.int8.data does not match the sha256 in .*manifest.json: refusing"):
        Artifact.open(art.dir)
    assert Artifact.open(art.dir, verify_files=False).kind == "detector"
    (art.dir / "m.int8.data").unlink()
    with pytest.raises(ArtifactError, match=r"m.int8.data is listed in .*manifest.json but missing$"):
        Artifact.open(art.dir)
    (art.dir / "m.int8.data").write_bytes(b"data")
    (art.dir / "sub").mkdir()
    (art.dir / "sub" / "stray.txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"sub/stray.txt is in the artifact but not listed in .*: remove it"):
        Artifact.open(art.dir)
    (art.dir / "sub" / "stray.txt").unlink()
    os.symlink(art.dir / "m.fp32.onnx", art.dir / "sub" / "link")
    with pytest.raises(ArtifactError, match=r"sub/link is a symbolic link: an artifact holds regular files only"):
        Artifact.open(art.dir)
    (art.dir / "sub" / "link").unlink()
    (art.dir / "m.fp32.onnx").unlink()
    os.symlink(art.dir / "m.int8.onnx", art.dir / "m.fp32.onnx")
    with pytest.raises(ArtifactError, match=r"an artifact holds regular files only; re-export it$"):
        Artifact.open(art.dir)


def test_accessors(art):
    a = Artifact.open(art.dir)
    assert a.kind == "detector" and a.preprocess["size"] == 8 and a.threshold == 1.0 and a.model_name == "tiny"
    assert [s.name for s in a.inputs] == ["images"] and [s.name for s in a.outputs] == ["logit"]
    assert a.onnx_path("int8") == art.dir / "m.int8.onnx" and a.onnx_sha256("int8") == _sha(b"int8")
    assert a.gates == {"int8": {"passed": True}} and set(a.precisions) == {"fp32", "int8"}
    with pytest.raises(ArtifactError, match=rf"{a.dir} has no fp16 variant \(it has \['fp32', 'int8'\]\)$"):
        a.require("fp16")
    bare = Artifact(a.dir, {k: v for k, v in a.manifest.items() if k not in ("gates", "model_name", "threshold")})
    assert bare.gates == {} and bare.model_name == "detector" and bare.threshold is None
    assert bare.threshold_for("int8") is None


def test_operating_points_and_thresholds(art):
    """Bugs: the no-VNNI map used on a CPU with VNNI (or not used without), fp32's threshold not moved by the map,
    or a precision without a map not deciding at fp32's threshold."""
    native = {"fp32": [0.0, 2.0], "reduced": [10.0, 12.0]}
    no_vnni = {"fp32": [0.0, 2.0], "reduced": [20.0, 22.0]}
    precisions = {
        **art.precisions,
        "int8": {**art.precisions["int8"], "operating_point": native, "operating_point_no_vnni": no_vnni},
    }
    a = Artifact(art.dir, {**art.manifest, "precisions": precisions})
    assert a.operating_point("int8") == native and a.operating_point("int8", saturating=True) == no_vnni
    assert a.threshold_for("int8") == pytest.approx(11.0) and a.threshold_for("int8", True) == pytest.approx(21.0)
    assert a.operating_point("fp32") is None and a.threshold_for("fp32") == 1.0 and a.operating_point("bf16") is None
    only_native = {**precisions, "int8": {**precisions["int8"], "operating_point_no_vnni": None}}
    b = Artifact(art.dir, {**art.manifest, "precisions": only_native})
    assert b.operating_point("int8", saturating=True) == native
    empty = {**precisions, "int8": {"file": "m.int8.onnx", "operating_point": {}}}
    assert Artifact(art.dir, {**art.manifest, "precisions": empty}).operating_point("int8") is None


def test_reference_run(art, tmp_path):
    """Bugs: a missing or changed reference accepted, or the messages not saying what to do."""
    assert art.reference_run("head.pt") == tmp_path / "run"
    with pytest.raises(
        ReferenceMissing,
        match=r"run/other.pt, which does not exist \(moved or deleted\?\); pass "
        r"--no-reference to run without the PyTorch reference$",
    ):
        art.reference_run("other.pt")
    (tmp_path / "run" / "head.pt").write_bytes(b"changed")
    with pytest.raises(
        ReferenceMissing,
        match=r"head.pt changed since .* was exported: it is not this artifact's "
        r"reference; pass --no-reference",
    ):
        art.reference_run("head.pt")
    no_run = Artifact(art.dir, {k: v for k, v in art.manifest.items() if k != "source_run"})
    with pytest.raises(ReferenceMissing, match="which does not exist"):
        no_run.reference_run("head.pt")


def test_edit_adds_drops_and_sets_then_verifies(art):
    """Bugs: a carried file lost or re-hashed wrongly, a dropped file left listed, a new file unhashed, a field
    not set, or an unlisted leftover making the new artifact refuse itself."""
    a = Artifact.open(art.dir)
    with a.edit() as ed:
        ed.path("m.fp16.onnx").write_bytes(b"fp16")
        ed.add("m.fp16.onnx")
        ed.drop("m.int8.onnx")
        ed.drop("m.int8.data")
        (ed.dir / "leftover.tmp").write_bytes(b"x")
        ed.set(precisions={"fp32": {"file": "m.fp32.onnx"}, "fp16": {"file": "m.fp16.onnx"}}, threshold=0.5)
    new = Artifact.open(ed.result.dir)
    assert new.files == {"m.fp32.onnx": _sha(b"fp32"), "m.fp16.onnx": _sha(b"fp16")}
    assert new.threshold == 0.5 and not (new.dir / "m.int8.onnx").exists() and not (new.dir / "leftover.tmp").exists()
    updated = new.update(threshold=0.25)
    assert Artifact.open(updated.dir).threshold == 0.25 and updated.files == new.files
    with pytest.raises(RuntimeError, match="boom"), updated.edit() as ed:
        ed.set(threshold=9.0)
        raise RuntimeError("boom")
    assert Artifact.open(updated.dir).threshold == 0.25  # an error inside the block changes nothing


def test_tool_versions_names_missing_packages():
    v = tool_versions(("onnx", "no-such-distribution-xyz"))
    assert v["no-such-distribution-xyz"] is None and v["onnx"] and list(v) == ["onnx", "no-such-distribution-xyz"]
    assert set(tool_versions()) == {
        "causal-deploy-toolkit",
        "torch",
        "open_clip_torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
    }


def test_edit_rewrites_nested_files_keeps_extras_and_reports(art):
    """Bugs: a rewritten file carried over from the old artifact on top of the new one, a nested name's folders not
    made, a file not in any precision (a report) dropped from the listing, dropping an unknown name failing, or the
    clean-up walking into an unlisted folder (reports, plans) and deleting what a writer put there."""
    a = Artifact.open(art.dir)
    with a.edit() as ed:
        ed.path("m.fp32.onnx").write_bytes(b"new fp32")
        ed.add("m.fp32.onnx")
        ed.path("reports/deep/calibration.json").write_text("{}")
        ed.add("reports/deep/calibration.json")
        ed.drop("never-listed.bin")
        bench = ed.dir / "bench"
        bench.mkdir()
        (bench / "r.json").write_text("{}")
    new = Artifact.open(ed.result.dir)
    assert (new.dir / "m.fp32.onnx").read_bytes() == b"new fp32" and new.files["m.fp32.onnx"] == _sha(b"new fp32")
    assert new.files["reports/deep/calibration.json"] == _sha(b"{}")
    assert (new.dir / "bench" / "r.json").is_file()
    assert new.files["m.int8.data"] == _sha(b"data")  # carried, unchanged


def test_reference_run_message_without_a_recorded_run(art):
    no_run = Artifact(art.dir, {k: v for k, v in art.manifest.items() if k != "source_run"})
    with pytest.raises(ReferenceMissing) as e:
        no_run.reference_run("head.pt")
    assert str(e.value).startswith(f"the PyTorch reference of {art.dir} is head.pt, which does not exist")
