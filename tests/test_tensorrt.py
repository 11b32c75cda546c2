"""TensorRT plans: cache keys and refusal messages (testable without TensorRT), the builder against a
recording stand-in for the `tensorrt` module, and the clear 'unavailable' path of the trt engine."""

import sys
import types
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from toolkit.artifact import Artifact
from toolkit.cli import app
from toolkit.engines import open_engine
from toolkit.engines.trt_engine import PlanError, batch_profile, find_plan, plan_key, plan_paths, unavailable_reason
from toolkit.io import sha256_file, write_json

H100 = {"compute_capability": "9.0", "tensorrt": "10.13.0"}


def _fake_plan(art, m, precision, machine_info, batches, payload=b"plan bytes"):
    key = plan_key(m["files"][m["precisions"][precision]["file"]], machine_info, batch_profile(m["inputs"], batches))
    plan, meta = plan_paths(art, precision, key)
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(payload)
    write_json(meta, {"key": key, "sha256": sha256_file(plan)})
    return plan


@pytest.fixture
def art(exported_artifact, tmp_path):
    import shutil

    shutil.copytree(exported_artifact, tmp_path / "art")
    return tmp_path / "art"


def test_plan_key_covers_onnx_gpu_trt_and_profile():
    prof = batch_profile([{"name": "images", "shape": ["batch", 3, 32, 32]}], (1, 8, 32))
    assert prof == {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    base = plan_key("a" * 64, H100, prof)
    assert plan_key("a" * 64, H100, prof) == base
    assert plan_key("b" * 64, H100, prof)["id"] != base["id"]
    assert plan_key("a" * 64, {**H100, "compute_capability": "8.6"}, prof)["id"] != base["id"]
    assert plan_key("a" * 64, {**H100, "tensorrt": "11.0.0"}, prof)["id"] != base["id"]
    other = batch_profile([{"name": "images", "shape": ["batch", 3, 32, 32]}], (1, 8, 64))
    assert plan_key("a" * 64, H100, other)["id"] != base["id"]
    with pytest.raises(ValueError, match="dynamic non-batch"):
        batch_profile([{"name": "images", "shape": ["batch", 3, "h", 32]}], (1, 8, 32))


def test_find_plan_matches_refuses_and_explains(art):
    m = Artifact.open(art).manifest
    with pytest.raises(PlanError, match="no TensorRT plan for fp32; build one with 'toolkit export"):
        find_plan(Artifact.open(art), "fp32", H100)
    plan = _fake_plan(art, m, "fp32", H100, (1, 8, 32))
    assert find_plan(Artifact.open(art), "fp32", H100) == plan
    assert find_plan(Artifact.open(art), "fp32", H100, (1, 8, 32)) == plan
    with pytest.raises(PlanError, match=r"compute_capability 9\.0 \(here 8\.6\)"):
        find_plan(Artifact.open(art), "fp32", {**H100, "compute_capability": "8.6"})
    with pytest.raises(PlanError, match=r"tensorrt 10\.13\.0 \(here 11\.0\.0\)"):
        find_plan(Artifact.open(art), "fp32", {**H100, "tensorrt": "11.0.0"})
    with pytest.raises(PlanError, match="profile"):
        find_plan(Artifact.open(art), "fp32", H100, (1, 8, 64))
    with pytest.raises(PlanError, match="no TensorRT plan for fp16"):
        find_plan(Artifact.open(art), "fp16", H100)
    plan.write_bytes(b"tampered")
    with pytest.raises(PlanError, match="does not match the sha256"):
        find_plan(Artifact.open(art), "fp32", H100)


def test_stale_onnx_hash_is_refused(art):
    m = Artifact.open(art).manifest
    _fake_plan(art, m, "fp32", H100, (1, 8, 32))
    files = {**m["files"], m["precisions"]["fp32"]["file"]: "0" * 64}  # as if the ONNX had been re-exported
    with pytest.raises(PlanError, match="onnx_sha256"):
        find_plan(Artifact(art, {**m, "files": files}), "fp32", H100)


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and CUDA are present here")
def test_trt_engine_says_what_is_missing(art):
    with pytest.raises(RuntimeError, match=r"trt engine unavailable: (TensorRT is not installed|no CUDA device)"):
        open_engine(art, "trt")
    res = CliRunner().invoke(app, ["export", Artifact.open(art).manifest["source_run"], "--out", str(art), "--trt"])
    assert res.exit_code == 2
    assert "cannot build TensorRT plans" in res.output
    assert Artifact.open(art).manifest["gates"]["fp32"]["passed"]  # the ONNX export before it is kept


class _Recorder:
    """Stand-in for the parts of the tensorrt module the builder touches; records each call."""

    RETURNS: ClassVar[dict] = {
        "parse_from_file": True,
        "create_timing_cache": "cache",
        "build_serialized_network": b"PLAN",
    }

    def __init__(self, strongly_typed: bool):
        self.calls = []
        rec = self

        class Obj:
            num_inputs = 1

            def __init__(self, name):
                self._name = name

            def __getattr__(self, attr):
                def call(*a, **k):
                    rec.calls.append((f"{self._name}.{attr}", a, k))
                    if attr.startswith("create_") and attr != "create_timing_cache":
                        return Obj(attr.removeprefix("create_"))
                    if attr == "get_input":
                        return types.SimpleNamespace(name="images")
                    if attr == "get_timing_cache":
                        return types.SimpleNamespace(serialize=lambda: b"TIMING")
                    return rec.RETURNS.get(attr)

                return call

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        self.module = types.SimpleNamespace(
            Logger=Logger,
            Builder=lambda logger: Obj("builder"),
            OnnxParser=lambda network, logger: Obj("parser"),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(**({"STRONGLY_TYPED": 5} if strongly_typed else {})),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        )


@pytest.mark.parametrize("strongly_typed_flag", [True, False], ids=["trt10", "trt11"])
def test_build_plan_uses_strong_typing_profile_workspace_and_timing_cache(tmp_path, monkeypatch, strongly_typed_flag):
    from export.tensorrt import build_plan

    rec = _Recorder(strongly_typed_flag)
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module)
    prof = {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    plan = build_plan(onnx_file, tmp_path / "p.plan", prof, 512, tmp_path / "timing.cache", log=lambda *_: None)
    assert plan.read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"TIMING"
    calls = {name: (a, k) for name, a, k in rec.calls}
    assert calls["builder.create_network"][0] == ((1 << 5) if strongly_typed_flag else 0,)
    assert calls["parser.parse_from_file"][0] == (str(onnx_file),)
    assert calls["builder_config.set_memory_pool_limit"][0] == ("WORKSPACE", 512 << 20)
    assert calls["optimization_profile.set_shape"][0] == ("images", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert calls["builder_config.set_timing_cache"] == (("cache",), {"ignore_mismatch": False})
    assert "builder_config.add_optimization_profile" in calls
