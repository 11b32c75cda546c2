"""The export core: module -> fp32 ONNX -> precision variants -> gates -> manifest, for any model kind.

A model kind (export/detector.py, the purifier later) describes itself with an `ExportKind`: the torch
module, tensor names, how to compare outputs, its gates, which parts stay fp32, and its own manifest
fields. Nothing here knows what a detector is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.onnx_export import EXTERNAL_DATA_BYTES, OPSET, export_onnx
from export.precision import write_fp16
from export.verify import GATES, check
from toolkit.artifact import GateFailed

PRECISIONS = ("fp32", "fp16")


@dataclass
class ExportKind:
    name: str  # manifest "kind" and the file stem: <name>.<precision>.onnx
    module: torch.nn.Module
    example: torch.Tensor  # batch >= 2 (see export_onnx)
    input_name: str
    output_names: list[str]
    compare: Callable[[dict, dict], dict]  # (reference outputs, engine outputs) -> stats the gates read
    verify_feeds: list[np.ndarray]  # input batches run through every engine (include a batch of 1)
    manifest: dict  # kind-specific fields (model config, preprocessing, threshold, ...)
    fp16_keep_ops: tuple[str, ...] = ("LayerNormalization", "Softmax")
    fp16_tail_after: str | None = None  # op type whose last node and everything after stays fp32
    gates: dict = field(default_factory=dict)  # precision -> gate; defaults from export.verify.GATES


def export_model(
    kind: ExportKind,
    out_dir: str | Path,
    precisions: tuple[str, ...] = PRECISIONS,
    log=print,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> dict:
    """Write <out_dir>/<kind>.<precision>.onnx for each precision, gate each against PyTorch, then the manifest.

    Raises GateFailed with the numbers (and writes no manifest) when any gate fails.
    """
    from toolkit.artifact import read_manifest, tool_versions, write_manifest
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.engines.torch_engine import TorchEngine

    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(
            f"unknown precision(s) {sorted(unknown)}; export writes {PRECISIONS} (int8: toolkit calibrate)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {p: f"{kind.name}.{p}.onnx" for p in ("fp32", *precisions)}
    log(f"exporting {kind.name} to ONNX (opset {OPSET}, dynamic batch) ...")
    inputs, outputs = export_onnx(
        kind.module,
        kind.example,
        out_dir / files["fp32"],
        kind.input_name,
        kind.output_names,
        1024,
        external_data_bytes,
        log=log,
    )
    variants = {"fp32": {"file": files["fp32"], "opset": OPSET}}
    if "fp16" in precisions:
        log("writing the fp16 variant ...")
        summary = write_fp16(
            out_dir / files["fp32"],
            out_dir / files["fp16"],
            kind.fp16_keep_ops,
            (),
            kind.fp16_tail_after,
            external_data_bytes,
        )
        variants["fp16"] = {"file": files["fp16"], "opset": OPSET, **summary}

    for v in variants.values():  # weights beside the graph (large models): hashed in the manifest too
        if (out_dir / (v["file"] + ".data")).is_file():
            v["data_file"] = v["file"] + ".data"
    with TorchEngine(kind.module, inputs, outputs) as ref:
        refs = [ref.infer({kind.input_name: x}) for x in kind.verify_feeds]
    gates = {}
    for precision in variants:
        gate = kind.gates.get(precision) or GATES[precision]()
        log(f"verifying {precision} against PyTorch on {sum(len(x) for x in kind.verify_feeds)} inputs ...")
        with OnnxRuntimeEngine(out_dir / files[precision]) as engine:
            got = [engine.infer({kind.input_name: x}) for x in kind.verify_feeds]
        stats = kind.compare(_cat(refs), _cat(got))
        ok, fails = check(stats, gate)
        gates[precision] = {"passed": ok, "gate": asdict(gate), "stats": stats, "engine": "onnxruntime-cpu"}
        if not ok:
            raise GateFailed(f"{precision} export gate failed for {out_dir / files[precision]}: " + "; ".join(fails))

    manifest = {
        "kind": kind.name,
        **kind.manifest,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "precisions": variants,
        "gates": gates,
        "verify_batches": [len(x) for x in kind.verify_feeds],
        "tool_versions": tool_versions(),
    }
    write_manifest(out_dir, manifest)
    return read_manifest(out_dir)


def _cat(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}
