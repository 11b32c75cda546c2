"""One Engine contract suite over every kind and precision; `trt` skips with its reason without TensorRT/CUDA."""

import numpy as np
import pytest

from toolkit.artifact import Artifact
from toolkit.engines import KINDS, open_engine

VARIANTS = [(k, p) for k in KINDS for p in (("fp32",) if k == "torch" else ("fp32", "fp16"))]


@pytest.fixture(params=VARIANTS, ids=[f"{k}-{p}" for k, p in VARIANTS])
def engine(request, exported_artifact):
    kind, precision = request.param
    if kind == "openvino":
        pytest.importorskip("openvino", reason="openvino: not installed (the 'openvino' extra)")
    if kind == "trt":
        from toolkit.engines.trt_engine import unavailable_reason

        reason = unavailable_reason()
        if reason:
            pytest.skip(f"trt: {reason}")
        from export.tensorrt import build_artifact_plans

        build_artifact_plans(exported_artifact, (1, 8, 16), precisions=(precision,))
    return open_engine(exported_artifact, kind, precision)


@pytest.mark.parametrize("batch", [1, 8])
def test_contract_shapes_and_dtypes(engine, exported_artifact, batch):
    size = Artifact.open(exported_artifact).manifest["preprocess"]["size"]
    assert [s.name for s in engine.inputs] == ["images"]
    assert [s.name for s in engine.outputs] == ["logit", "feature"]
    with engine as e:
        out = e.infer({"images": np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)})
        e.synchronize()
    assert out["logit"].shape == (batch,) and out["logit"].dtype == np.float32
    assert out["feature"].shape[0] == batch
    np.testing.assert_allclose(np.linalg.norm(out["feature"], axis=1), 1.0, atol=1e-5)


def test_contract_rejects_bad_feeds(engine):
    with engine as e:
        with pytest.raises(ValueError, match="inputs"):
            e.infer({"x": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(ValueError, match="dtype"):
            e.infer({"images": np.zeros((1, 3, 32, 32), np.float64)})
        with pytest.raises(ValueError, match="shape"):
            e.infer({"images": np.zeros((1, 3, 31, 32), np.float32)})
    with pytest.raises(RuntimeError, match="outside"):
        engine.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})


def test_unavailable_provider_is_a_clear_error(exported_artifact):
    import onnxruntime as ort

    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT provider present")
    with pytest.raises(RuntimeError, match="not available here"):
        OnnxRuntimeEngine(exported_artifact / "detector.fp32.onnx", provider="tensorrt")
