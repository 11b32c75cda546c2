"""One Engine contract suite over every kind and precision (fp32, fp16, the int8 Q/DQ file, OpenVINO's gated bf16);
`trt` skips with its reason without TensorRT/CUDA, bf16 where the CPU has none."""

import numpy as np
import pytest

from toolkit.artifact import Artifact
from toolkit.engines import KINDS, open_engine

VARIANTS = [(k, p) for k in KINDS for p in (("fp32",) if k == "torch" else ("fp32", "fp16", "int8"))]
VARIANTS.append(("openvino", "bf16"))


@pytest.fixture(scope="module")
def full_artifact(exported_artifact, toy_data, tmp_path_factory):
    """The session artifact + int8 (calibrated) + bf16 (gated, where OpenVINO and the CPU have it)."""
    import importlib.util
    import shutil

    from calibration.pipeline import calibrate_artifact

    art = tmp_path_factory.mktemp("full") / "art"
    shutil.copytree(exported_artifact, art)
    calibrate_artifact(art, toy_data / "gan_a", toy_data / "gan_b", workers=0, progress=False, log=lambda *_: None)
    if importlib.util.find_spec("openvino") is not None:
        from export.bf16 import add_bf16
        from toolkit.engines.openvino_engine import bf16_unavailable_reason

        if bf16_unavailable_reason() is None:
            add_bf16(art, toy_data / "gan_b", log=lambda *_: None)
    return art


@pytest.fixture(params=VARIANTS, ids=[f"{k}-{p}" for k, p in VARIANTS])
def engine(request, full_artifact):
    kind, precision = request.param
    if kind == "openvino":
        pytest.importorskip("openvino", reason="openvino: not installed (the 'openvino' extra)")
    if precision == "bf16" and "bf16" not in Artifact.open(full_artifact).precisions:
        from toolkit.engines.openvino_engine import bf16_unavailable_reason

        pytest.skip(f"bf16: {bf16_unavailable_reason()}")
    if kind == "trt":
        from toolkit.engines.trt_engine import unavailable_reason

        reason = unavailable_reason()
        if reason:
            pytest.skip(f"trt: {reason}")
        from export.tensorrt import build_artifact_plans

        build_artifact_plans(full_artifact, (1, 8, 16), precisions=(precision,))
    return open_engine(full_artifact, kind, precision)


@pytest.mark.parametrize("batch", [1, 8])
def test_contract_shapes_and_dtypes(engine, full_artifact, batch):
    size = Artifact.open(full_artifact).manifest["preprocess"]["size"]
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
