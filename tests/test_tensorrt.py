"""TensorRT plans: cache keys and refusal messages (testable without TensorRT), the builder and the runtime
against a strict stand-in for the `tensorrt` module (tests/trt_standin.py), and the clear 'unavailable' path."""

import sys
from pathlib import Path

import numpy as np
import pytest
from trt_standin import make_module
from typer.testing import CliRunner

from toolkit.artifact import Artifact
from toolkit.cli import app
from toolkit.engines import open_engine
from toolkit.engines.trt_engine import PlanError, batch_profile, find_plan, plan_key, plan_paths, unavailable_reason
from toolkit.io import sha256_file, write_json

H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.13.0"}


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


def _builder_calls(version, tmp_path, monkeypatch, tf32=None, payload=b"onnx", prof=None):
    from export.tensorrt import build_plan

    mod = make_module(version)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    prof = prof or {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(payload)
    extra = {} if tf32 is None else {"tf32": tf32}  # None: the default, which must be TF32 off
    plan = build_plan(onnx_file, tmp_path / "p.plan", prof, 512, tmp_path / "timing.cache", lambda *_: None, **extra)
    return mod, plan, onnx_file


@pytest.mark.parametrize("version", [10, 11], ids=["trt10", "trt11"])
def test_build_plan_uses_strong_typing_profile_workspace_and_timing_cache(tmp_path, monkeypatch, version):
    """Against the strict stand-in (tests/trt_standin.py): an invented or misspelled TensorRT call raises there."""
    mod, plan, onnx_file = _builder_calls(version, tmp_path, monkeypatch)
    assert plan.read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"TIMING"
    calls = {name: (a, k) for name, a, k in mod.calls}
    assert calls["Builder.create_network"][0] == (1 << mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED.value,)
    assert calls["OnnxParser.parse_from_file"][0] == (str(onnx_file),)
    assert calls["IBuilderConfig.set_memory_pool_limit"][0] == (mod.MemoryPoolType.WORKSPACE, 512 << 20)
    assert calls["IOptimizationProfile.set_shape"][0] == ("images", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    assert calls["IBuilderConfig.set_timing_cache"][1] == {"ignore_mismatch": False}
    assert "IBuilderConfig.add_optimization_profile" in calls


@pytest.mark.parametrize("version", [10, 11], ids=["trt10", "trt11"])
def test_fp32_plans_are_built_without_tf32(tmp_path, monkeypatch, version):
    """Guards against TF32 left on (TensorRT's default) or switched on for fp32 plans: the flag is read at build."""
    mod, _, _ = _builder_calls(version, tmp_path, monkeypatch)  # the default
    built = [k for name, _, k in mod.calls if name == "Builder.build_serialized_network"]
    assert built == [{"tf32": False}]
    mod, _, _ = _builder_calls(version, tmp_path, monkeypatch, tf32=False)
    assert [k for name, _, k in mod.calls if name == "Builder.build_serialized_network"] == [{"tf32": False}]
    mod, _, _ = _builder_calls(version, tmp_path, monkeypatch, tf32=True)
    assert [k for name, _, k in mod.calls if name == "Builder.build_serialized_network"] == [{"tf32": True}]


def test_parse_failure_names_the_parser_errors(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match=r"could not parse .*m\.onnx: Failed to parse ONNX model; no graph$"):
        _builder_calls(11, tmp_path, monkeypatch, payload=b"not onnx")


def test_the_timing_cache_of_one_build_seeds_the_next_and_a_missing_profile_is_named(tmp_path, monkeypatch):
    mod, _, _ = _builder_calls(11, tmp_path, monkeypatch)
    assert [a for n, a, _ in mod.calls if n == "IBuilderConfig.create_timing_cache"] == [(b"",)]  # no cache yet
    mod, _, _ = _builder_calls(11, tmp_path, monkeypatch)
    assert [a for n, a, _ in mod.calls if n == "IBuilderConfig.create_timing_cache"] == [(b"TIMING",)]
    with pytest.raises(ValueError, match=r"input 'images' has no profile shapes \(profile has \['x'\]\)"):
        _builder_calls(11, tmp_path, monkeypatch, prof={"x": [[1], [1], [1]]})


def _attribute_uses(path: Path, root: str) -> set[str]:
    """Every `root.X.Y` attribute chain in a module (e.g. trt.BuilderFlag.TF32)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == root:
                found.add(".".join(reversed(parts)))
    return found


@pytest.mark.parametrize("version", [10, 11], ids=["trt10", "trt11"])
def test_every_tensorrt_name_the_code_uses_exists_in_both_apis(version):
    """Static check of every `trt.*` name in the builder and the engine, including branches no test runs."""
    from pathlib import Path

    mod = make_module(version)
    root = Path(__file__).resolve().parents[1]
    uses = _attribute_uses(root / "export/tensorrt.py", "trt") | _attribute_uses(
        root / "toolkit/engines/trt_engine.py", "trt"
    )
    assert uses, "no trt.* use found: the check would pass vacuously"
    for chain in sorted(uses):
        obj = mod
        for part in chain.split("."):
            assert hasattr(obj, part), f"trt.{chain} is not in the TensorRT {version} API"
            obj = getattr(obj, part)


def _engine(monkeypatch, tmp_path, version=11, io=None):
    from trt_standin import CpuDevice

    from toolkit.engines.trt_engine import TrtEngine

    mod = make_module(version, io=io)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    return mod, TrtEngine(plan, device=CpuDevice(mod))


@pytest.mark.parametrize("version", [10, 11], ids=["trt10", "trt11"])
def test_trt_engine_binds_shapes_and_addresses_and_slices_outputs(monkeypatch, tmp_path, version):
    """TrtEngine driven through the strict runtime stand-in: buffers at the profile maximum, the batch's shape
    set per call, outputs cut to the batch, execute_async_v3 on the stream's handle."""
    mod, eng = _engine(monkeypatch, tmp_path, version)
    assert [s.name for s in eng.inputs] == ["images"] and [s.name for s in eng.outputs] == ["logit", "feature"]
    assert eng.inputs[0].shape == ("batch", 3, 32, 32) and eng.outputs[1].dtype == "float32"
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with eng:
        assert tuple(eng._buffers["images"].shape) == (32, 3, 32, 32)
        out = eng.infer({"images": x})
        out3 = eng.infer({"images": x[:3]})
        with pytest.raises(ValueError, match="batch 33 exceeds the plan's profile maximum 32"):
            eng.infer({"images": np.zeros((33, 3, 32, 32), np.float32)})
    np.testing.assert_allclose(out["logit"], x.reshape(5, -1).sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out["feature"], x.reshape(5, -1)[:, :4])
    assert out3["logit"].shape == (3,) and out3["feature"].shape == (3, 4)
    shapes = [a for name, a, _ in mod.calls if name == "IExecutionContext.set_input_shape"]
    assert shapes[0] == ("images", (32, 3, 32, 32)) and ("images", (5, 3, 32, 32)) in shapes
    assert [a for name, a, _ in mod.calls if name == "IExecutionContext.execute_async_v3"] == [(1234,), (1234,)]


def test_trt_engine_bf16_outputs_reach_the_host_as_float32_and_fp8_is_refused_by_name(monkeypatch, tmp_path):
    prof = ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))
    io = [("images", "INPUT", "BF16", (-1, 3, 32, 32), prof), ("logit", "OUTPUT", "BF16", (-1,), None),
          ("feature", "OUTPUT", "HALF", (-1, 4), None)]  # fmt: skip
    _, eng = _engine(monkeypatch, tmp_path, io=io)
    assert [s.dtype for s in eng.inputs + eng.outputs] == ["float32", "float32", "float16"]
    x = np.ones((2, 3, 32, 32), np.float32)
    with eng:
        out = eng.infer({"images": x})
    assert out["logit"].dtype == np.float32 and out["logit"].tolist() == [3072.0, 3072.0]
    io[1] = ("logit", "OUTPUT", "FP8", (-1,), None)
    with pytest.raises(PlanError, match="'logit' has TensorRT type FP8"):
        _engine(monkeypatch, tmp_path, io=io)


def test_onnxruntime_provider_chain_tensorrt_then_cuda_then_cpu(tmp_path):
    from toolkit.engines.onnxruntime_engine import provider_chain

    assert provider_chain("cpu") == ["CPUExecutionProvider"]
    assert provider_chain("cuda") == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    chain = provider_chain("tensorrt", tmp_path / "cache")
    assert [c if isinstance(c, str) else c[0] for c in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # fmt: skip
    assert chain[0][1]["trt_engine_cache_path"] == str(tmp_path / "cache") and (tmp_path / "cache").is_dir()


def test_build_plan_defaults_log_and_no_timing_cache(tmp_path, monkeypatch):
    """Bugs: the default workspace moved, a missing timing cache path used anyway, or the build not announced."""
    from export.tensorrt import build_plan

    mod = make_module(11)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    logs = []
    prof = {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    build_plan(onnx_file, tmp_path / "p.plan", prof, log=logs.append)
    calls = {name: (a, k) for name, a, k in mod.calls}
    assert calls["IBuilderConfig.set_memory_pool_limit"][0] == (mod.MemoryPoolType.WORKSPACE, 4096 << 20)
    assert calls["IBuilderConfig.create_timing_cache"][0] == (b"",)
    assert sorted(tmp_path.iterdir()) == sorted([onnx_file, tmp_path / "p.plan"])  # no timing cache written
    assert logs == [f"building TensorRT plan for {onnx_file} (minutes for a full-size model) ..."]


def test_a_tensorrt_without_strong_typing_gets_a_plain_network(tmp_path, monkeypatch):
    """Bugs: the network flag not 0 when the TensorRT in use has no STRONGLY_TYPED flag (or the lookup raising)."""
    from trt_standin import _Enum

    from export.tensorrt import build_plan

    mod = make_module(10)
    mod.NetworkDefinitionCreationFlag = _Enum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    prof = {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    build_plan(onnx_file, tmp_path / "p.plan", prof, log=lambda *_: None)
    assert [a for name, a, _ in mod.calls if name == "Builder.create_network"] == [(0,)]


def test_a_failed_build_says_so_and_writes_nothing(tmp_path, monkeypatch):
    from export.tensorrt import build_plan

    mod = make_module(11)
    mod.Builder.build_serialized_network = lambda self, network, config: None
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"onnx")
    prof = {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]}
    with pytest.raises(RuntimeError, match=r"^TensorRT failed to build a plan from .*m\.onnx \(see the TensorRT log "
                                           r"above\)$"):  # fmt: skip
        build_plan(onnx_file, tmp_path / "p.plan", prof, log=lambda *_: None)
    assert not (tmp_path / "p.plan").exists()


def test_build_artifact_plans_builds_each_precision_once_then_reuses_it(art, monkeypatch):
    """What `toolkit export --trt` calls, against the stand-in (the mutation run found no test driving it: all
    its mutants survived). Bugs guarded: the profile's batches or their check changed, TF32 or the workspace
    default moved, a key that `find_plan` (the engine's lookup) does not find, the meta record, a matching plan
    rebuilt or a stale one reused, precisions not honoured, an opened Artifact re-opened (and re-hashed)."""
    import json

    import export.tensorrt as et
    from toolkit.engines.trt_engine import find_plan

    mod = make_module(10)
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setattr(et, "unavailable_reason", lambda: None)
    monkeypatch.setattr(et, "machine", lambda: H100)
    opened = Artifact.open(art)
    real_open = Artifact.__dict__["open"]
    monkeypatch.setattr(Artifact, "open", classmethod(lambda *a, **k: pytest.fail("re-opened a verified artifact")))
    logs = []
    built = et.build_artifact_plans(opened, log=logs.append)
    assert sorted(built) == sorted(opened.precisions) and len(built) >= 2

    def builds():
        return [(a, k) for name, a, k in mod.calls if name == "Builder.build_serialized_network"]

    assert len(builds()) == len(built) and all(k == {"tf32": False} for _, k in builds())
    shapes = [a for name, a, _ in mod.calls if name == "IOptimizationProfile.set_shape"]
    assert set(shapes) == {("images", (1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}
    pools = [a for name, a, _ in mod.calls if name == "IBuilderConfig.set_memory_pool_limit"]
    assert set(pools) == {(mod.MemoryPoolType.WORKSPACE, 4096 << 20)}
    assert (art / "plans" / "timing.cache").is_file()
    for precision, plan in built.items():
        assert find_plan(opened, precision, H100, (1, 8, 32)) == plan  # the engine finds what export built
        meta = json.loads(plan.with_suffix(".json").read_text())
        assert meta == {"key": meta["key"], "sha256": sha256_file(plan), "workspace_mib": 4096,
                        "onnx": opened.precisions[precision]["file"]}  # fmt: skip
    n = len(mod.calls)
    assert et.build_artifact_plans(opened, log=logs.append) == built and len(mod.calls) == n  # reused, not rebuilt
    assert [ln for ln in logs if "cached plan" in ln] == [
        f"{p}: cached plan {built[p].name} matches this machine" for p in built
    ]
    built["fp32"].with_suffix(".json").unlink()  # a plan without its record is rebuilt
    et.build_artifact_plans(opened, precisions=("fp32",), log=logs.append)
    assert len(builds()) == len(built) + 1 and built["fp32"].with_suffix(".json").is_file()
    tf32 = et.build_artifact_plans(opened, precisions=("fp32",), tf32=True, workspace_mib=512, log=logs.append)
    assert list(tf32) == ["fp32"] and tf32["fp32"] != built["fp32"] and builds()[-1][1] == {"tf32": True}
    assert json.loads(tf32["fp32"].with_suffix(".json").read_text())["workspace_mib"] == 512
    small = et.build_artifact_plans(opened, batches=(1, 1, 1), precisions=("fp32",), log=logs.append)
    assert small["fp32"] == find_plan(opened, "fp32", H100, (1, 1, 1))
    for bad in ((0, 1, 2), (2, 1, 4), (1, 8, 4)):
        with pytest.raises(ValueError, match=r"1 <= min <= opt <= max"):
            et.build_artifact_plans(opened, batches=bad, log=logs.append)
    monkeypatch.setattr(Artifact, "open", real_open)  # a directory is opened (and verified) first
    assert et.build_artifact_plans(art, precisions=("fp32",), log=logs.append) == {"fp32": built["fp32"]}
    monkeypatch.setattr(et, "unavailable_reason", lambda: "no CUDA device is visible")
    with pytest.raises(RuntimeError, match=r"^cannot build TensorRT plans: no CUDA device is visible$"):
        et.build_artifact_plans(opened, log=logs.append)
