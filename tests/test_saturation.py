"""The AVX2 (no VNNI) int8 GEMM emulation: the rewritten graph computes the kernel's saturating arithmetic."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.saturation import emulate_u8s8_saturation, u8s8_reference


def test_reference_saturates_a_pair_the_way_vpmaddubsw_does():
    # u = q + 128 = 255 twice, w = 127 twice: 255*127*2 = 64770 -> 32767 in int16; minus 128 * 254 for the zero point
    assert u8s8_reference(np.array([[127, 127]]), np.array([[127], [127]])).item() == 32767 - 128 * 254
    # opposite signs can never saturate: 255 * 127 - 0 * 128 fits
    q, w = np.array([[127, -128]]), np.array([[127], [-127]])
    assert u8s8_reference(q, w).item() == 127 * 127 + 128 * 127


def _qdq_model(w_q: np.ndarray, sw: np.ndarray, sa: float, gemm: bool) -> onnx.ModelProto:
    """x (M, K) -> Q/DQ (int8, zero point 0) -> MatMul with DQ(int8 weight, per channel), or Gemm(transB=1) + bias."""
    k, n = w_q.shape
    inits = [
        numpy_helper.from_array(np.array(sa, np.float32), "sa"),
        numpy_helper.from_array(np.array(0, np.int8), "za"),
        numpy_helper.from_array(w_q.T.copy() if gemm else w_q, "wq"),
        numpy_helper.from_array(sw.astype(np.float32), "sw"),
        numpy_helper.from_array(np.zeros(n, np.int8), "zw"),
        numpy_helper.from_array(np.linspace(-1, 1, n).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0 if gemm else 1),
        helper.make_node("Gemm", ["xd", "wd", "bias"], ["y"], transB=1)
        if gemm
        else helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], inits)  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("k", [64, 33])
def test_emulated_graph_equals_the_kernel_arithmetic(gemm, k):
    rng = np.random.default_rng(0)
    n, m, sa = 16, 24, 0.05
    w_q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    w_q[:, :4] = 127  # columns where every pair can saturate
    sw = rng.uniform(0.01, 0.02, n)
    x = rng.normal(0, 3, (m, k)).astype(np.float32)
    x[:8] = np.abs(x[:8]) + 2.0  # large positive activations: u near 255
    model = _qdq_model(w_q, sw, sa, gemm)
    emulated, layers = emulate_u8s8_saturation(model)
    onnx.checker.check_model(emulated, full_check=True)
    assert len(layers) == 1 and layers[0]["candidates"] > 0

    q_act = np.clip(np.round(x / sa), -128, 127).astype(np.int64)
    expect = u8s8_reference(q_act, w_q) * (sa * sw)[None] + (np.linspace(-1, 1, n) if gemm else 0)
    exact = _run(model, x)
    got = _run(emulated, x)
    assert np.abs(got - exact).max() > 1.0  # saturation really happened in this layer
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-3)  # float32 rounding of sums up to ~50
    assert model.graph.node[-1].op_type in ("MatMul", "Gemm")  # the caller's model is left as it was


def test_seven_bit_weights_cannot_saturate_and_are_left_alone():
    rng = np.random.default_rng(1)
    w_q = rng.integers(-64, 65, (32, 8)).astype(np.int8)
    model = _qdq_model(w_q, np.full(8, 0.01), 0.05, gemm=False)
    emulated, layers = emulate_u8s8_saturation(model)
    assert layers[0]["candidates"] == 0 and len(emulated.graph.node) == len(model.graph.node)
    x = (np.abs(rng.normal(0, 3, (4, 32))) + 4).astype(np.float32)
    q_act = np.clip(np.round(x / 0.05), -128, 127).astype(np.int64)
    np.testing.assert_allclose(_run(emulated, x), u8s8_reference(q_act, w_q) * 0.05 * 0.01, rtol=1e-5, atol=1e-5)
