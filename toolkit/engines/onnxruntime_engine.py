"""`onnxruntime` engine: CPU, CUDA or TensorRT execution provider, chosen by name.

The providers are tried in order, TensorRT ahead of CUDA ahead of CPU, so a node TensorRT cannot take runs on
CUDA rather than falling to the CPU; the TensorRT provider caches its engines (and timing cache) in a directory
the caller gives, the artifact's `plans/` for `open_engine`, so a second session skips minutes of building.
CUDA's TF32 is off: the file's precision is what runs (an fp32 file's gate is 1e-4 on the logits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.engines.base import Engine, TensorSpec

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeEngine(Engine):
    kind = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        optimize: bool = True,
    ):
        """`cache_dir`: where the TensorRT provider keeps its engines (required for provider tensorrt).
        `optimize=False`: graph optimisations off, so no Q/DQ pair is fused into the CPU's int8 kernels and an int8
        file computes the exact integer sums in float (as a CPU with VNNI does; calibration judges for those CPUs
        with it on a CPU whose own int8 kernels saturate, calibration/saturation.py). Not for serving."""
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            raise RuntimeError(
                f"onnxruntime provider {provider!r} ({PROVIDERS[provider]}) is not available here; "
                f"available: {available}. Install onnxruntime-gpu for cuda/tensorrt."
            )
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        chain = provider_chain(provider, cache_dir)
        # default session options: our files must open in any consumer's default session (Triton's too), so a
        # graph that onnxruntime mishandles is fixed in export (export/graph_passes.py), not worked around here
        self.session = ort.InferenceSession(str(self.path), opts, providers=chain)
        spec = lambda v: TensorSpec(v.name, tuple(v.shape), _ORT_DTYPES[v.type])  # noqa: E731
        super().__init__([spec(v) for v in self.session.get_inputs()], [spec(v) for v in self.session.get_outputs()])

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed), strict=True))


def provider_chain(provider: str, cache_dir: str | Path | None = None) -> list:
    """The execution providers (with options) for `provider`, in the order onnxruntime should try them."""
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"})
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if cache_dir is None:
        raise ValueError("the TensorRT provider needs a cache directory for its engines (cache_dir)")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    trt_options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
    }
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
