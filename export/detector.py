"""Detector kind: run directory -> artifact directory (detector.fp32.onnx + manifest.json), gated."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from export.onnx_export import OPSET, export_onnx
from export.verify import Fp32Gate, check_fp32, compare


class GateFailed(RuntimeError):
    pass


def export_detector(
    run_dir: str | Path,
    out_dir: str | Path,
    verify_batches: tuple[int, ...] = (1, 8),
    gate: Fp32Gate | None = None,
    seed: int = 0,
) -> dict:
    """Export the deployed detector of `run_dir` to `out_dir`; raises GateFailed with the numbers."""
    from toolkit.artifact import read_manifest, tool_versions, write_manifest
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.engines.torch_engine import TorchEngine
    from toolkit.models.detector import load_deployed_detector

    gate = gate or Fp32Gate()
    model, config = load_deployed_detector(run_dir)
    size = config["preprocess"]["size"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_name = "detector.fp32.onnx"
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    inputs, outputs = export_onnx(model, example, out_dir / onnx_name, "images", ["logit", "feature"])

    threshold = float(config["threshold"])
    rng = np.random.default_rng(seed)
    results = {}
    with TorchEngine(model, inputs, outputs) as ref, OnnxRuntimeEngine(out_dir / onnx_name) as ort_engine:
        for b in verify_batches:
            feed = {"images": rng.standard_normal((b, 3, size, size)).astype(np.float32)}
            results[f"batch{b}"] = compare(ref.infer(feed), ort_engine.infer(feed), threshold)
    worst = {
        "max_abs_logit": max(r["max_abs_logit"] for r in results.values()),
        "decision_agreement": min(r["decision_agreement"] for r in results.values()),
    }
    ok, fails = check_fp32(worst, gate)
    gates = {"fp32": {"passed": ok, "gate": asdict(gate), "worst": worst, "per_batch": results}}
    if not ok:
        raise GateFailed(f"fp32 export gate failed for {out_dir / onnx_name}: " + "; ".join(fails))
    manifest = {
        "kind": "detector",
        "source_run": str(run_dir),
        "model_config": {k: config[k] for k in ("backbone", "backbone_identity", "causal", "train")},
        "preprocess": config["preprocess"],
        "threshold": threshold,
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "precisions": {"fp32": {"file": onnx_name, "opset": OPSET}},
        "gates": gates,
        "tool_versions": tool_versions(),
    }
    write_manifest(out_dir, manifest)
    return read_manifest(out_dir)
