"""What a model kind declares: its run format, reference, export specification, parity and capabilities.

Every command asks the kind (toolkit.kinds.get / for_run / for_artifact) instead of testing names; a
flag that does not apply to a kind is refused with the kind's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


class KindError(ValueError):
    """A command or flag that does not apply to this model kind (one line, with the reason)."""


@dataclass(frozen=True)
class Capabilities:
    detects: bool  # outputs a logit with a decision threshold: infer rows, AUC, int8 gate, threshold calibration
    purifies: bool  # outputs images: `toolkit purify`, --purify in front of a detector
    int8: str | None = None  # None: int8 calibration applies; otherwise the reason it does not
    trt: bool = True  # TensorRT plans can be built (precision lives in the graph, so any kind can)


@dataclass
class ExportSpec:
    """Everything `export/` needs to export one run of a kind; `export/` itself knows no model."""

    module: object  # torch.nn.Module, eval mode
    example: object  # torch.Tensor, batch >= 2 (a batch-1 example fixes the batch dimension)
    verify_feeds: list[np.ndarray]  # input batches every engine runs (include a batch of 1)
    manifest: dict  # kind-specific manifest fields (model config, preprocessing, threshold, source run, ...)
    fp16_keep_ops: tuple[str, ...] = ("LayerNormalization", "Softmax")
    fp16_tail_after: str | None = None  # op type whose last node and everything after stays fp32
    threshold: float | None = None
    verify_labels: np.ndarray | None = None  # labels of the verify feeds (a labelled folder): AUC/accuracy bounds


class ModelKind:
    """Base of the kind modules in toolkit/kinds/; each module defines `KIND = <subclass>()`."""

    name: str = ""
    run_format: str = ""  # config.json "format" of its run directories (version after '@')
    weights_file: str = ""  # file in the run whose sha256 pins the PyTorch reference
    input_name: str = "images"
    output_names: tuple[str, ...] = ()
    capabilities: Capabilities = Capabilities(detects=False, purifies=False)
    gate_types: ClassVar[dict[str, Callable]] = {}  # precision -> gate dataclass (toolkit.compare)
    parity_columns: tuple[tuple[str, str], ...] = ()  # (stats key, column title) for reports

    def load_reference(self, run_dir: Path):
        """-> torch module (eval mode) computing the artifact's outputs from its inputs in fp32."""
        raise NotImplementedError

    def export_spec(self, run_dir: Path, verify_images: Path | None = None, verify_n: int = 64, seed: int = 0):
        raise NotImplementedError

    def parity(self, ref: dict, got: dict, threshold: float | None = None, labels=None, refit: bool = False,
               got_threshold: float | None = None) -> dict:  # fmt: skip
        raise NotImplementedError

    def gates(self, overrides: dict[tuple[str, str], float] | None = None) -> dict:
        """Default gate per precision, with (precision, field) -> value overrides; unknown fields refused."""
        from toolkit.compare import gate_fields

        gates = {p: g() for p, g in self.gate_types.items()}
        for (precision, name), value in (overrides or {}).items():
            g = gates.get(precision)
            if g is None or name not in gate_fields(g):
                have = "; ".join(f"{p}: {', '.join(gate_fields(x))}" for p, x in gates.items())
                raise KindError(f"{self.name} artifacts have no {precision} gate bound {name!r} (their gates: {have})")
            setattr(g, name, value)
        return gates

    def require(self, capability: str, what: str) -> None:
        """Refuse `what` (a command or flag) when this kind lacks `capability`, in one line."""
        caps = self.capabilities
        if capability == "int8" and caps.int8 is not None:
            raise KindError(f"{what} does not apply to {self.name} artifacts: {caps.int8}")
        if capability in ("detects", "purifies", "trt") and not getattr(caps, capability):
            need = {"detects": "a detector", "purifies": "a purifier", "trt": "a kind with TensorRT plans"}[capability]
            raise KindError(f"{what} needs {need} artifact; this one is a {self.name}")
