import json
import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from export.detector import GateFailed, export_detector
from export.verify import Fp32Gate
from toolkit.artifact import ArtifactError, read_manifest
from toolkit.cli import app


def test_artifact_is_checked_onnx_with_dynamic_batch(exported_artifact):
    m = read_manifest(exported_artifact)
    model = onnx.load(str(exported_artifact / "detector.fp32.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert isinstance(m["inputs"][0]["shape"][0], str)
    g = m["gates"]["fp32"]
    assert g["passed"] and g["worst"]["max_abs_logit"] <= 1e-4 and g["worst"]["decision_agreement"] == 1.0
    assert set(g["per_batch"]) == {"batch1", "batch8"}


def test_onnx_matches_torch_at_large_batch(exported_artifact):
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.engines.torch_engine import TorchEngine
    from toolkit.models.detector import load_deployed_detector

    m = read_manifest(exported_artifact)
    model, _ = load_deployed_detector(m["source_run"])
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
        read_manifest(art)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="run 'toolkit export' first"):
        read_manifest(art)


def test_failed_gate_fails_the_export_with_numbers(trained_run, tmp_path):
    with pytest.raises(GateFailed, match=r"max \|logit diff\| .* > -1"):
        export_detector(trained_run, tmp_path / "a", gate=Fp32Gate(max_abs_logit=-1.0))
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_export_cli(trained_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "fp32 gate passed" in res.output
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["kind"] == "detector"
