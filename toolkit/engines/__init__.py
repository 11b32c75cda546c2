"""One Engine interface (base.py) with kinds `torch` and `onnxruntime`; `trt` comes with the export issue."""

from __future__ import annotations

from toolkit.engines.base import Engine, TensorSpec

KINDS = ("torch", "onnxruntime")

__all__ = ["KINDS", "Engine", "TensorSpec"]
