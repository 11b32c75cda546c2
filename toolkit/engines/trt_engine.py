"""`trt` engine: a native TensorRT plan (TensorRT 10 and 11 Python APIs), plus the plan cache's keys.

Thin on purpose: precision already lives in the ONNX file the plan was built from (strongly typed
network), so this only binds named tensors to device buffers and calls `execute_async_v3` on a stream.
Device buffers are allocated once, at the profile's largest shapes, and reused across calls; host
copies are part of `infer` (say so when timing it).

Plans live beside the artifact in `plans/`, keyed by ONNX sha256 + GPU model and compute capability +
TensorRT version + profile shapes + whether TF32 was allowed (docs/DESIGN.md). A plan whose key does not match
this machine is refused with the reason; `toolkit export --trt` (or `toolkit bench --build-plans`) builds one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from toolkit.engines.base import Engine, TensorSpec

PLANS = "plans"
KEY_FIELDS = ("onnx_sha256", "gpu", "compute_capability", "tensorrt", "tf32", "profile")

# TensorRT I/O data type (DataType member name) -> (numpy dtype on the host, torch dtype on the device).
# bf16 has no numpy type: the host side is float32 and the copy to / from the device converts. The 8-bit and
# 4-bit float types (FP8, FP4, E8M0) and INT4 are refused by name: they belong inside a graph, between Q/DQ
# nodes, never at its inputs or outputs (trt.nptype raises on them, so it is never called).
_IO_DTYPES = {
    "FLOAT": ("float32", "float32"),
    "HALF": ("float16", "float16"),
    "BF16": ("float32", "bfloat16"),
    "INT64": ("int64", "int64"),
    "INT32": ("int32", "int32"),
    "INT8": ("int8", "int8"),
    "UINT8": ("uint8", "uint8"),
    "BOOL": ("bool", "bool"),
}


class PlanError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why the trt engine cannot run here (None when it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "TensorRT is not installed (the 'tensorrt' Python package; its binaries come from NVIDIA's index, "
            "not PyPI alone). Use --engine onnxruntime here."
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible (TensorRT needs an NVIDIA GPU)"
    return None


def machine() -> dict:
    """The parts of a plan key that come from this machine: GPU model, compute capability, TensorRT version.
    The model is there as well as the capability: an H100 and an H200 share 9.0 but not their kernels' timings."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def plan_key(onnx_sha256: str, machine_info: dict, profile: dict[str, list[list[int]]], tf32: bool = False) -> dict:
    """Everything a plan depends on; `profile` maps input name -> [min, opt, max] shapes."""
    key = {
        "onnx_sha256": onnx_sha256,
        "gpu": machine_info.get("gpu"),
        "compute_capability": machine_info["compute_capability"],
        "tensorrt": machine_info["tensorrt"],
        "tf32": bool(tf32),
        "profile": {k: [list(map(int, s)) for s in v] for k, v in sorted(profile.items())},
    }
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key


def batch_profile(inputs: list[dict], batches: tuple[int, int, int]) -> dict[str, list[list[int]]]:
    """Manifest input specs + (min, opt, max) batch -> a TensorRT profile over the batch dimension."""
    prof = {}
    for spec in inputs:
        rest = spec["shape"][1:]
        if any(not isinstance(d, int) for d in rest):
            raise ValueError(f"input {spec['name']} has a dynamic non-batch dimension {spec['shape']}")
        prof[spec["name"]] = [[b, *rest] for b in batches]
    return prof


def plan_paths(artifact_dir: str | Path, precision: str, key: dict) -> tuple[Path, Path]:
    d = Path(artifact_dir) / PLANS
    stem = f"{precision}.{key['id']}"
    return d / f"{stem}.plan", d / f"{stem}.json"


def find_plan(
    artifact,
    precision: str,
    machine_info: dict,
    batches: tuple[int, int, int] | None = None,
    tf32: bool = False,
) -> Path:
    """The cached plan of an `Artifact` for `precision` matching this machine (and `batches`, if given)."""
    from toolkit.io import read_json, sha256_file

    artifact_dir = artifact.dir
    if precision not in artifact.precisions:
        raise PlanError(f"{artifact_dir}: no {precision} ONNX in the manifest ({sorted(artifact.precisions)})")
    onnx_sha = artifact.onnx_sha256(precision)
    inputs = artifact.manifest["inputs"]
    candidates = sorted((Path(artifact_dir) / PLANS).glob(f"{precision}.*.json"))
    mismatches = []
    for meta_path in candidates:
        meta = read_json(meta_path)
        key = meta["key"]
        profile = key["profile"] if batches is None else batch_profile(inputs, batches)
        want = plan_key(onnx_sha, machine_info, profile, tf32)
        if key == want:
            plan = meta_path.with_suffix(".plan")
            if not plan.is_file() or sha256_file(plan) != meta["sha256"]:
                raise PlanError(f"{plan} is missing or does not match the sha256 in {meta_path}: refusing to run it")
            return plan
        diffs = [f"{k} {key.get(k)} (here {want[k]})" for k in KEY_FIELDS if key.get(k) != want[k]]
        mismatches.append(f"{meta_path.name}: " + ", ".join(diffs))
    hint = "build one with 'toolkit export RUN --out ARTIFACT --trt' or 'toolkit bench ... --engine trt --build-plans'"
    if not candidates:
        raise PlanError(f"{artifact_dir}: no TensorRT plan for {precision}; {hint}")
    raise PlanError(f"{artifact_dir}: no {precision} plan matches this machine: " + "; ".join(mismatches) + f"; {hint}")


def io_dtypes(trt_dtype, tensor: str, path) -> tuple[str, str]:
    """A TensorRT DataType of an I/O tensor -> (host numpy dtype name, device torch dtype name); refuses by name."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if name not in _IO_DTYPES:
        raise PlanError(
            f"{path}: I/O tensor {tensor!r} has TensorRT type {name}, which the trt engine cannot exchange with the "
            f"host (it takes {', '.join(_IO_DTYPES)}); keep {name} inside the graph, between Q/DQ nodes"
        )
    return _IO_DTYPES[name]


class CudaDevice:
    """Where the engine's buffers and stream live: torch's CUDA allocator and streams (one GPU)."""

    def __init__(self, index: int = 0):
        self.name = f"cuda:{index}"

    def stream(self):
        import torch

        return torch.cuda.Stream(device=self.name)

    def on(self, stream):
        import torch

        return torch.cuda.stream(stream)

    @staticmethod
    def handle(stream) -> int:
        return stream.cuda_stream

    def empty(self, shape: tuple[int, ...], dtype: str):
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=self.name)


class TrtEngine(Engine):
    kind = "trt"

    def __init__(self, plan_path: str | Path, device: int | CudaDevice = 0):
        """`device`: a GPU index, or a `CudaDevice`-like object (tests drive the engine with a CPU stand-in)."""
        if not isinstance(device, CudaDevice) and isinstance(device, int):
            reason = unavailable_reason()
            if reason:
                raise RuntimeError(f"trt engine unavailable: {reason}")
            device = CudaDevice(device)
        import tensorrt as trt

        self.path = Path(plan_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        self._trt, self.device = trt, device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise PlanError(f"{self.path}: TensorRT could not deserialize the plan (built for another version or GPU?)")
        ins, outs, self._device_dtype = [], [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            host, dev = io_dtypes(self.engine.get_tensor_dtype(name), name, self.path)
            self._device_dtype[name] = dev
            shape = tuple(
                d if d >= 0 else ("batch" if j == 0 else f"d{j}")
                for j, d in enumerate(self.engine.get_tensor_shape(name))
            )
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (ins if is_input else outs).append(TensorSpec(name, shape, host))
        super().__init__(ins, outs)
        self.context = None
        self._buffers: dict = {}

    def activate(self) -> None:
        self.context = self.engine.create_execution_context()
        self.stream = self.device.stream()
        # inputs: the profile's max shape; outputs: their shape with every input at its max shape
        for spec in self.inputs:
            self._set_shape(spec.name, tuple(self.engine.get_tensor_profile_shape(spec.name, 0)[2]))
        for spec in [*self.inputs, *self.outputs]:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            self._buffers[spec.name] = self.device.empty(shape, self._device_dtype[spec.name])

    def deactivate(self) -> None:
        self.synchronize()
        self._buffers.clear()
        self.context = None

    def synchronize(self) -> None:
        if self.context is not None:
            self.stream.synchronize()

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, shape):
            raise ValueError(f"{self.path}: TensorRT refused shape {shape} for input {name!r} (outside its profile?)")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with self.device.on(self.stream):
            for spec in self.inputs:
                x = feed[spec.name]
                buf = self._buffers[spec.name]
                if x.shape[0] > buf.shape[0]:
                    raise ValueError(
                        f"batch {x.shape[0]} exceeds the plan's profile maximum {buf.shape[0]} ({self.path})"
                    )
                buf[: x.shape[0]].copy_(torch.from_numpy(np.ascontiguousarray(x)), non_blocking=False)
                self._set_shape(spec.name, tuple(x.shape))
                if not self.context.set_tensor_address(spec.name, buf.data_ptr()):
                    raise RuntimeError(f"{self.path}: TensorRT refused the address of input {spec.name!r}")
            shapes = {}
            for spec in self.outputs:
                shapes[spec.name] = tuple(self.context.get_tensor_shape(spec.name))
                if not self.context.set_tensor_address(spec.name, self._buffers[spec.name].data_ptr()):
                    raise RuntimeError(f"{self.path}: TensorRT refused the address of output {spec.name!r}")
            if not self.context.execute_async_v3(self.device.handle(self.stream)):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
            res = {}
            for spec in self.outputs:
                s = shapes[spec.name]
                # an output's shape follows the inputs' batch: its valid part is the buffer's first prod(s) values
                valid = self._buffers[spec.name].flatten()[: int(np.prod(s))].view(s)
                res[spec.name] = valid.to(getattr(torch, spec.dtype)).cpu().numpy()
        self.stream.synchronize()
        return res
