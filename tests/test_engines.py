"""One Engine contract suite, parametrised over every kind present (trt: not built yet, see README)."""

import numpy as np
import pytest

from toolkit.artifact import read_manifest
from toolkit.engines.base import TensorSpec


@pytest.fixture(params=["torch", "onnxruntime"])
def engine(request, exported_artifact):
    m = read_manifest(exported_artifact)
    if request.param == "torch":
        from toolkit.engines.torch_engine import TorchEngine
        from toolkit.models.detector import load_deployed_detector

        model, _ = load_deployed_detector(m["source_run"])
        specs = [TensorSpec.from_dict(d) for d in m["inputs"]], [TensorSpec.from_dict(d) for d in m["outputs"]]
        return TorchEngine(model, *specs)
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(exported_artifact / m["precisions"]["fp32"]["file"])


@pytest.mark.parametrize("batch", [1, 8])
def test_contract_shapes_and_dtypes(engine, exported_artifact, batch):
    size = read_manifest(exported_artifact)["preprocess"]["size"]
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
