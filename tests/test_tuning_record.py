"""toolkit/tuning.py without an exported model: the fingerprint and its id, which bench targets a record keeps,
how it ranks them, and how `resolve` picks (nearest batch, ties, a precision no longer gated, no record), on a
stand-in artifact. tests/test_tuning.py runs the same path through `toolkit bench --tune` on a real one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from toolkit import tuning
from toolkit.tuning import (
    FALLBACK,
    fingerprint,
    fingerprint_id,
    measured_from_targets,
    record_path,
    resolve,
    write_record,
)


def _art(tmp_path, precisions=("fp32", "fp16", "int8"), gates=None):
    gates = {"fp16": {"passed": True}, "int8": {"passed": False}} if gates is None else gates
    return SimpleNamespace(dir=tmp_path, precisions={p: {} for p in precisions}, gates=gates)


def test_fingerprint_names_what_changes_the_winner(monkeypatch):
    """Bugs: a field dropped from the fingerprint (a record would be reused on another machine), or its id not a
    stable hash of all of it."""
    from toolkit import machine

    monkeypatch.setattr(machine, "cpu_model", lambda: "CPU X")
    monkeypatch.setattr(machine, "cpu_flags", lambda: ["avx2", "fma"])
    fp = fingerprint()
    assert set(fp) == {"cpu", "cpu_flags", "cpus", "gpu", "versions"}
    assert fp["cpu"] == "CPU X" and fp["cpu_flags"] == ["avx2", "fma"] and fp["cpus"] == os.cpu_count()
    assert set(fp["versions"]) >= {"onnxruntime", "torch"}
    want = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint_id(fp) == want and len(want) == 16
    assert fingerprint_id({**fp, "cpus": 1000}) != want
    assert fingerprint_id(dict(reversed(list(fp.items())))) == want  # key order does not matter
    assert tuning.TUNING == "tuning" and FALLBACK == ("onnxruntime", "fp32")


def test_record_path(tmp_path):
    art = _art(tmp_path)
    fp = {"cpu": "a"}
    assert record_path(art, fp) == Path(tmp_path) / "tuning" / f"{fingerprint_id(fp)}.json"
    assert record_path(art).name == f"{fingerprint_id(fingerprint())}.json"


def _target(engine, precision, status="ok", **lat):
    return {
        "engine": engine,
        "precision": precision,
        "status": status,
        "latency": {b: {"p50_ms": 1000 * int(b) / ips, "throughput_ips": ips} for b, ips in lat.items()},
    }


def test_measured_keeps_only_gated_measured_precisions_of_the_artifact(tmp_path):
    """Bugs: a failed target, a precision whose gate failed, or one the artifact lacks kept; fp32 not treated as
    gated; the provider given to engines other than onnxruntime."""
    art = _art(tmp_path, precisions=("fp32", "fp16", "int8"))
    targets = {
        "ort-fp32": _target("onnxruntime", "fp32", **{"1": 10.0, "8": 40.0}),
        "ov-fp16": _target("openvino", "fp16", **{"1": 20.0}),
        "ort-int8": _target("onnxruntime", "int8", **{"1": 99.0}),  # its gate failed
        "ort-bf16": _target("onnxruntime", "bf16", **{"1": 99.0}),  # not in the artifact
        "trt-fp16": _target("trt", "fp16", status="skipped: no TensorRT", **{"1": 99.0}),
    }
    m = measured_from_targets(art, targets, provider="cuda")
    assert sorted(m) == [1, 8]
    assert [r["target"] for r in m[1]] == ["ort-fp32", "ov-fp16"] and [r["target"] for r in m[8]] == ["ort-fp32"]
    assert m[1][0] == {
        "target": "ort-fp32",
        "engine": "onnxruntime",
        "precision": "fp32",
        "provider": "cuda",
        "p50_ms": 100.0,
        "throughput_ips": 10.0,
    }
    assert m[1][1]["provider"] is None
    ungated = _art(tmp_path, gates={})  # no gate recorded: only fp32 counts as gated
    assert [r["precision"] for r in measured_from_targets(ungated, targets)[1]] == ["fp32"]
    assert measured_from_targets(ungated, targets)[1][0]["provider"] == "cpu"


def _record(tmp_path, monkeypatch, art, measured, command="toolkit bench x --tune"):
    monkeypatch.setattr(tuning, "fingerprint", lambda: {"cpu": "test"})
    return write_record(art, measured, command)


def test_write_record_ranks_each_batch_fastest_first(tmp_path, monkeypatch):
    """Bugs: rows not ranked by throughput (descending), batches not sorted, or the fingerprint or command lost."""
    art = _art(tmp_path)
    rows = [
        {"engine": e, "precision": "fp32", "provider": "cpu", "p50_ms": 1.0, "throughput_ips": t}
        for e, t in (("a", 5.0), ("b", 50.0), ("c", 20.0))
    ]
    path = _record(tmp_path, monkeypatch, art, {8: rows, 1: rows[:1]})
    rec = json.loads(path.read_text())
    assert path == Path(tmp_path) / "tuning" / f"{fingerprint_id({'cpu': 'test'})}.json"
    assert rec["fingerprint"] == {"cpu": "test"} and rec["command"] == "toolkit bench x --tune"
    assert list(rec["batches"]) == ["1", "8"] and [r["engine"] for r in rec["batches"]["8"]] == ["b", "c", "a"]


def test_resolve_falls_back_without_a_record(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "fingerprint", lambda: {"cpu": "test"})
    choice, why = resolve(_art(tmp_path), 8)
    assert choice == ("onnxruntime", "fp32", "cpu")
    assert why == (
        f"fallback onnxruntime/fp32: no tuning record for this machine in {Path(tmp_path) / 'tuning'} "
        f"(run 'toolkit bench {tmp_path} --tune')"
    )


def _rows(*spec):
    return [{"engine": e, "precision": p, "provider": pr, "p50_ms": 1.0, "throughput_ips": t} for e, p, pr, t in spec]


def test_resolve_picks_the_fastest_gated_at_the_nearest_batch(tmp_path, monkeypatch):
    """Bugs: the nearest batch misjudged (ties go to the smaller), a precision whose gate failed since the record
    was written picked, the provider lost, or the reason not saying where the figure was measured."""
    art = _art(tmp_path, gates={"fp16": {"passed": True}, "int8": {"passed": True}})
    measured = {
        1: _rows(("openvino", "fp16", None, 30.0), ("onnxruntime", "fp32", "cpu", 10.0)),
        4: _rows(("onnxruntime", "int8", "cuda", 90.0), ("openvino", "fp16", None, 60.0)),
        16: _rows(("trt", "fp16", None, 500.0)),
    }
    _record(tmp_path, monkeypatch, art, measured)
    assert resolve(art, 1) == (("openvino", "fp16", "cpu"), "openvino/fp16: fastest gated choice, 30.0 images/s")
    choice, why = resolve(art, 10)  # 4 and 16 are 6 away: the smaller wins
    assert choice == ("onnxruntime", "int8", "cuda")
    assert why == "onnxruntime/int8: fastest gated choice (measured at batch 4, the nearest to 10), 90.0 images/s"
    assert resolve(art, 11)[0] == ("trt", "fp16", "cpu")
    assert resolve(art, 2)[0] == ("openvino", "fp16", "cpu")  # 1 is nearer than 4
    art.gates["int8"] = {"passed": False}  # re-gated since the record was written
    assert resolve(art, 4)[0] == ("openvino", "fp16", "cpu")
    del art.precisions["fp16"]  # removed from the artifact
    art.precisions.pop("int8")
    choice, why = resolve(art, 4)
    assert choice == ("onnxruntime", "fp32", "cpu")
    assert why == "fallback onnxruntime/fp32: no recorded choice is still gated in the artifact"
    art.gates.pop("fp16")
    art.precisions["fp16"] = {}
    assert resolve(art, 4)[0] == ("openvino", "fp16", "cpu")  # no gate record for it: taken as passed


@pytest.mark.parametrize("batch, want", [(0, 1), (2, 1), (3, 4), (100, 16)])
def test_resolve_nearest_batch(tmp_path, monkeypatch, batch, want):
    art = _art(tmp_path, gates={})
    measured = {b: _rows((f"e{b}", "fp32", "cpu", float(b))) for b in (1, 4, 16)}
    _record(tmp_path, monkeypatch, art, measured)
    assert resolve(art, batch)[0][0] == f"e{want}"


def test_fingerprint_names_the_gpu_and_the_runtimes(monkeypatch):
    """Bugs: the GPU not recorded (or recorded as '' without one), the wrong device read, or a runtime whose
    version changes the winner left out."""
    import torch

    assert fingerprint()["gpu"] is None or torch.cuda.is_available()
    assert set(fingerprint()["versions"]) == {"onnxruntime", "openvino", "torch", "tensorrt"}
    props = {0: SimpleNamespace(name="NVIDIA H200", major=9, minor=0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
    assert fingerprint()["gpu"] == "NVIDIA H200 (cc 9.0)"


def test_a_skipped_target_does_not_end_the_scan(tmp_path):
    """Bug: the first unusable target ending the loop (`continue` -> `break`), dropping every target after it."""
    art = _art(tmp_path)
    targets = {"bad": _target("trt", "fp16", status="skipped", **{"1": 5.0}),
               "good": _target("onnxruntime", "fp32", **{"1": 10.0})}  # fmt: skip
    assert [r["target"] for r in measured_from_targets(art, targets)[1]] == ["good"]
