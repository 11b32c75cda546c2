"""OpenVINO engine: f32 execution is bit-comparable with onnxruntime (its silent bf16 default is never used),
bf16 runs where the CPU has it (and is refused with the reason where it does not)."""

import numpy as np
import pytest

from toolkit.engines import open_engine

ov = pytest.importorskip("openvino")


def test_f32_hint_matches_onnxruntime_fp32(exported_artifact):
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with open_engine(exported_artifact, "onnxruntime", "fp32") as o, open_engine(exported_artifact, "openvino") as v:
        assert v.execution == "f32"
        a, b = o.infer({"images": x}), v.infer({"images": x})
    assert np.abs(a["logit"] - b["logit"]).max() <= 1e-4  # the fp32 export gate's bound


def test_bf16_runs_where_the_cpu_has_it_and_is_refused_where_not(exported_artifact):
    from toolkit.engines.openvino_engine import OpenVinoEngine, bf16_unavailable_reason

    path = exported_artifact / "detector.fp32.onnx"
    reason = bf16_unavailable_reason()
    if reason:
        with pytest.raises(RuntimeError, match="bf16 refused: this CPU has no native bf16"):
            OpenVinoEngine(path, execution="bf16")
        return
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with OpenVinoEngine(path, execution="f32") as f, OpenVinoEngine(path, execution="bf16") as h:
        assert h.execution == "bf16"
        a, b = f.infer({"images": x}), h.infer({"images": x})
    cos = (
        (a["feature"] * b["feature"]).sum(1)
        / np.linalg.norm(a["feature"], axis=1)
        / np.linalg.norm(b["feature"], axis=1)
    )
    assert cos.min() >= 0.99 and not np.array_equal(a["logit"], b["logit"])  # really bf16, and close
