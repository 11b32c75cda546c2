import json
import os
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from export.core import export_run
from toolkit.artifact import Artifact, ArtifactError, GateFailed
from toolkit.cli import app


def test_artifact_is_checked_onnx_with_dynamic_batch(exported_artifact):
    m = Artifact.open(exported_artifact).manifest
    model = onnx.load(str(exported_artifact / "detector.fp32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert isinstance(m["inputs"][0]["shape"][0], str)
    g = m["gates"]["fp32"]
    assert g["passed"] and g["stats"]["max_abs_logit"] <= 1e-4 and g["stats"]["decision_agreement"] == 1.0
    assert m["verify_batches"][:2] == [1, 8] and g["stats"]["n"] == sum(m["verify_batches"])


def test_gelu_is_written_in_the_order_onnxruntime_fuses(exported_artifact, tmp_path):
    """torch exports x * (0.5 * (1 + erf(x/sqrt2))); the export moves the 0.5 last so ORT's GeluFusion fires."""
    import onnxruntime as ort

    from export.graph_passes import reorder_erf_gelu

    path = exported_artifact / "detector.fp32.onnx"
    model = onnx.load(str(path))
    assert reorder_erf_gelu(model) == 0  # already rewritten at export: the pass found nothing left to do
    n_erf = sum(n.op_type == "Erf" for n in model.graph.node)
    assert n_erf > 0
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Erf" not in optimized and optimized.count("BiasGelu") + optimized.count("Gelu") == n_erf


def test_fp16_variant_keeps_norms_softmax_and_head_in_fp32(exported_artifact):
    m = Artifact.open(exported_artifact).manifest
    g16 = m["gates"]["fp16"]
    assert g16["passed"] and g16["stats"]["min_cosine_feature"] >= 0.999
    model = onnx.load(str(exported_artifact / "detector.fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # fp32 in/out, a drop-in for the fp32 file
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [f32, f32, f32]
    kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(types[n.output[0]] == f32 for n in kept)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
    assert sum(types[n.output[0]] == f16 for n in convs) >= len(convs) - 1  # only the final projection stays fp32
    head = next(n for n in model.graph.node if n.op_type == "Gemm" and "head.weight" in n.input)
    assert types["head.weight"] == f32 and types[head.input[0]] == f32  # head weights and inputs in fp32
    # no fp32 -> fp16 -> fp32 round trip inside the kept tail
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in producers and producers[n.input[0]].op_type == "Cast":
            raise AssertionError(f"Cast chain {producers[n.input[0]].name} -> {n.name}")


def test_fp16_gate_failure_names_the_numbers(trained_run, tmp_path):
    with pytest.raises(GateFailed, match=r"fp16 export gate failed .* min_cosine_feature [\d.]+ \(gate >= 1\.1\)"):
        export_run(trained_run, tmp_path / "a", gate_overrides={("fp16", "min_cosine_feature"): 1.1})
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_onnx_matches_torch_at_large_batch(exported_artifact):
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.engines.torch_engine import TorchEngine
    from toolkit.kinds.detector import load_deployed

    m = Artifact.open(exported_artifact).manifest
    model, _ = load_deployed(m["source_run"])
    x = np.random.default_rng(1).standard_normal((64, 3, 32, 32)).astype(np.float32)
    with OnnxRuntimeEngine(exported_artifact / "detector.fp32.onnx") as o:
        got = o.infer({"images": x})
    with TorchEngine(model, o.inputs, o.outputs) as t:
        ref = t.infer({"images": x})
    assert np.abs(got["logit"] - ref["logit"]).max() <= 1e-4


def test_tampered_file_is_refused(exported_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    data = bytearray((art / "detector.fp32.onnx").read_bytes())
    data[-1] ^= 0xFF
    (art / "detector.fp32.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        Artifact.open(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="run 'toolkit export' first"):
        Artifact.open(art)


def test_failed_gate_fails_the_export_with_numbers(trained_run, tmp_path):
    with pytest.raises(GateFailed, match=r"fp32 export gate failed .* max_abs_logit .* \(gate <= -1\)"):
        export_run(trained_run, tmp_path / "a", ("fp32",), gate_overrides={("fp32", "max_abs_logit"): -1.0})
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_export_cli(trained_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "fp32 gate passed" in res.output and "fp16 gate passed" in res.output
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["kind"] == "detector"


def test_external_data_weights_are_written_hashed_calibrated_and_run(trained_run, toy_data, tmp_path):
    from toolkit.engines import open_engine

    art = tmp_path / "ext"
    m = export_run(trained_run, art, external_data_bytes=0).manifest  # force weights out of the graph files
    for p in ("fp32", "fp16"):
        v = m["precisions"][p]
        assert v["data_file"] == v["file"] + ".data" and v["data_file"] in m["files"]
        graph = onnx.load(str(art / v["file"]), load_external_data=False).graph
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
        assert m["gates"][p]["passed"]
    with open_engine(art, "onnxruntime", "fp16") as e:
        assert e.infer({"images": np.zeros((2, 3, 32, 32), np.float32)})["logit"].shape == (2,)
    # issue 25 (ViT-L/14): calibrating read the fp32 weights through the staging directory's hard link, which
    # onnx refuses ("multiple hard links, indicating a potential hardlink attack"); threshold rewrites too
    from calibration.pipeline import calibrate_artifact

    r = calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", workers=0, progress=False, no_vnni_n=0)
    assert r["artifact_object"].precisions["int8"]
    assert {os.stat(art / f).st_nlink for f in r["artifact_object"].files} == {1}
    data = art / m["precisions"]["fp32"]["data_file"]
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        Artifact.open(art)
