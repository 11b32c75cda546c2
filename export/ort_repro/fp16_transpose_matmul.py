"""Minimal reproduction of an onnxruntime crash, kept for an upstream report (see export/graph_passes.py).

An fp16 graph `Transpose(perm=[1, 0, 2]) -> MatMul(constant fp16 weight)` makes `InferenceSession`
(CPU provider, default options) die with SIGSEGV while it optimizes the graph on x86-64; disabling the
`NchwcTransformer` avoids it, and so does `MatMul -> Transpose` (same numbers). Seen with onnxruntime
1.31.1 and 1.32.0 (Linux x86-64, AVX2 and AVX-512 CPUs). Run: `python export/ort_repro/fp16_transpose_matmul.py`;
it builds each graph, opens it in a child process and prints the child's exit status.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPEN = "import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"


def graph(transpose_first: bool):
    w = numpy_helper.from_array(np.full((8, 24), 0.01, np.float16), "w")
    if transpose_first:
        nodes = [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["t", "w"], ["y"]),
        ]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2]),
        ]
    g = helper.make_graph(
        nodes,
        "repro",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, "N", 24])],
        [w],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def open_status(model) -> int:
    """Exit status of a child process that creates a default CPU session (-11: SIGSEGV)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "repro.onnx"
        onnx.save(model, str(path))
        return subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True).returncode


def main() -> None:
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}")
    for first in (True, False):
        name = "Transpose -> MatMul" if first else "MatMul -> Transpose"
        print(f"{name} (fp16): child exit status {open_status(graph(first))}")


if __name__ == "__main__":
    main()
