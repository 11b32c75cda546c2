"""`openvino` engine: OpenVINO's CPU plugin on the artifact's own ONNX files (fp32, fp16, the int8 Q/DQ file).

The execution precision is always set explicitly: OpenVINO's default on CPUs with AVX512_BF16 or AMX runs
fp32 models in bf16 without saying so (ViT-B/16: max |logit diff| 4.5e-4 against f32 on such a CPU,
measured for the issue), so `f32` is the hint for every file unless bf16 is asked for, which is refused
on a CPU without native bf16 (it would be emulated, slower than f32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.engines.base import Engine, TensorSpec

EXECUTION = ("f32", "bf16")


def bf16_unavailable_reason() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return "OpenVINO is not installed (pip install 'causal-deploy-toolkit[openvino]')"
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        return f"this CPU has no native bf16 (OpenVINO CPU capabilities: {', '.join(caps)})"
    return None


class OpenVinoEngine(Engine):
    kind = "openvino"

    def __init__(self, onnx_path: str | Path, execution: str = "f32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeError("OpenVINO is not installed (pip install 'causal-deploy-toolkit[openvino]')") from None
        if execution not in EXECUTION:
            raise ValueError(f"openvino execution precision must be one of {EXECUTION}, got {execution!r}")
        if execution == "bf16" and (reason := bf16_unavailable_reason()):
            raise RuntimeError(f"bf16 refused: {reason}")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": execution, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.execution = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it runs in

        def spec(port) -> TensorSpec:
            shape = tuple(d.get_length() if d.is_static else ("batch" if i == 0 else f"d{i}")
                          for i, d in enumerate(port.get_partial_shape()))  # fmt: skip
            return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)

        super().__init__([spec(p) for p in self.compiled.inputs], [spec(p) for p in self.compiled.outputs])
        self._request = None

    def activate(self) -> None:
        self._request = self.compiled.create_infer_request()

    def deactivate(self) -> None:
        self._request = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self._request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        return {port.get_any_name(): np.array(v, copy=True) for port, v in res.items()}
