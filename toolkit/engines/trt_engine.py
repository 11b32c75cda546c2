"""`trt` engine: a native TensorRT plan (TensorRT 10 and 11 Python APIs), plus the plan cache's keys.

Thin on purpose: precision already lives in the ONNX file the plan was built from (strongly typed
network), so this only binds named tensors to device buffers and calls `execute_async_v3` on a stream.
Device buffers are allocated once, at the profile's largest shapes, and reused across calls; host
copies are part of `infer` (say so when timing it).

Plans live beside the artifact in `plans/`, keyed by ONNX sha256 + GPU compute capability + TensorRT
version + profile shapes (DESIGN.md). A plan whose key does not match this machine is refused with
the reason; `toolkit export --trt` (or `toolkit bench --build-plans`) builds a fresh one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from toolkit.engines.base import Engine, TensorSpec

PLANS = "plans"


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
    """The parts of a plan key that come from this machine: GPU compute capability and TensorRT version."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def plan_key(onnx_sha256: str, machine_info: dict, profile: dict[str, list[list[int]]]) -> dict:
    """Everything a plan depends on; `profile` maps input name -> [min, opt, max] shapes."""
    key = {
        "onnx_sha256": onnx_sha256,
        "compute_capability": machine_info["compute_capability"],
        "tensorrt": machine_info["tensorrt"],
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
        want = plan_key(onnx_sha, machine_info, key["profile"] if batches is None else batch_profile(inputs, batches))
        if key == want:
            plan = meta_path.with_suffix(".plan")
            if not plan.is_file() or sha256_file(plan) != meta["sha256"]:
                raise PlanError(f"{plan} is missing or does not match the sha256 in {meta_path}: refusing to run it")
            return plan
        diffs = [
            f"{k} {key[k]} (here {want[k]})"
            for k in ("onnx_sha256", "compute_capability", "tensorrt", "profile")
            if key[k] != want[k]
        ]
        mismatches.append(f"{meta_path.name}: " + ", ".join(diffs))
    hint = "build one with 'toolkit export RUN --out ARTIFACT --trt' or 'toolkit bench ... --engine trt --build-plans'"
    if not candidates:
        raise PlanError(f"{artifact_dir}: no TensorRT plan for {precision}; {hint}")
    raise PlanError(f"{artifact_dir}: no {precision} plan matches this machine: " + "; ".join(mismatches) + f"; {hint}")


class TrtEngine(Engine):
    kind = "trt"

    def __init__(self, plan_path: str | Path, device: int = 0):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"trt engine unavailable: {reason}")
        import tensorrt as trt

        self.path = Path(plan_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        self._trt, self.device = trt, f"cuda:{device}"
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise PlanError(f"{self.path}: TensorRT could not deserialize the plan (built for another version or GPU?)")
        ins, outs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            shape = tuple(
                d if d >= 0 else ("batch" if j == 0 else f"d{j}")
                for j, d in enumerate(self.engine.get_tensor_shape(name))
            )
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (ins if is_input else outs).append(TensorSpec(name, shape, dtype))
        super().__init__(ins, outs)
        self.context = None
        self._buffers: dict = {}

    def activate(self) -> None:
        import torch

        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        # inputs: the profile's max shape; outputs: their shape with every input at its max shape
        for spec in self.inputs:
            self.context.set_input_shape(spec.name, self.engine.get_tensor_profile_shape(spec.name, 0)[2])
        for spec in [*self.inputs, *self.outputs]:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            self._buffers[spec.name] = torch.empty(shape, dtype=_torch_dtype(spec.dtype), device=self.device)

    def deactivate(self) -> None:
        self.synchronize()
        self._buffers.clear()
        self.context = None

    def synchronize(self) -> None:
        if self.context is not None:
            self.stream.synchronize()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self.stream):
            for spec in self.inputs:
                x = feed[spec.name]
                buf = self._buffers[spec.name]
                if x.shape[0] > buf.shape[0]:
                    raise ValueError(
                        f"batch {x.shape[0]} exceeds the plan's profile maximum {buf.shape[0]} ({self.path})"
                    )
                buf[: x.shape[0]].copy_(torch.from_numpy(np.ascontiguousarray(x)), non_blocking=False)
                self.context.set_input_shape(spec.name, tuple(x.shape))
                self.context.set_tensor_address(spec.name, buf.data_ptr())
            shapes = {}
            for spec in self.outputs:
                shapes[spec.name] = tuple(self.context.get_tensor_shape(spec.name))
                self.context.set_tensor_address(spec.name, self._buffers[spec.name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
            res = {n: self._buffers[n].flatten()[: int(np.prod(s))].view(s).cpu().numpy() for n, s in shapes.items()}
        self.stream.synchronize()
        return res


def _torch_dtype(name: str):
    import torch

    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int8": torch.int8,
        "bool": torch.bool,
    }[name]
