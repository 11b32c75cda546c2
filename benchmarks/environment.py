"""The environment fingerprint every benchmark report carries: CPU/GPU, driver, threads, library versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from toolkit.machine import SPEED_FLAGS, cpu_flags, cpu_model

__all__ = ["SPEED_FLAGS", "cpu_flags", "cpu_line", "environment"]

LIBRARIES = (
    "causal-deploy-toolkit",
    "torch",
    "open_clip_torch",
    "diffusers",
    "numpy",
    "scikit-learn",
    "pillow",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxscript",
    "tensorrt",
    "ray",
    "openvino",
)


def cpu_line(env: dict) -> str:
    """'2 CPUs (AMD EPYC ...; flags avx2 avx512f ...)': what every report prints next to a speed figure."""
    if "cpu_flags" not in env:
        return f"{env['cpus']} CPUs ({env['processor']}; flags not recorded)"
    flags = " ".join(env["cpu_flags"]) or f"none of {' '.join(SPEED_FLAGS)}"
    return f"{env['cpus']} CPUs ({env['processor']}; flags {flags})"


def _gpu() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    gpu = {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda_runtime": torch.version.cuda,
    }
    if shutil.which("nvidia-smi"):
        q = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit"
        res = subprocess.run(["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True)
        if res.returncode == 0:
            gpu["nvidia_smi"] = res.stdout.strip().splitlines()[0]
    return gpu


def environment() -> dict:
    import onnxruntime as ort
    import torch

    from toolkit.artifact import tool_versions

    return {
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_providers": ort.get_available_providers(),
        "gpu": _gpu(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": tool_versions(LIBRARIES),
    }
