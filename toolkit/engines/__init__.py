"""One Engine interface (base.py), kinds `torch`, `onnxruntime` and `trt`; `open_engine` opens one from an artifact."""

from __future__ import annotations

from pathlib import Path

from toolkit.engines.base import Engine, TensorSpec

KINDS = ("torch", "onnxruntime", "trt")

__all__ = ["KINDS", "Engine", "TensorSpec", "open_engine"]


def open_engine(
    artifact_dir: str | Path,
    kind: str,
    precision: str = "fp32",
    provider: str = "cpu",
    manifest: dict | None = None,
    batches: tuple[int, int, int] | None = None,
) -> Engine:
    """An engine for a verified artifact (read_manifest checks every file's sha256 first).

    torch: the PyTorch fp32 reference rebuilt from the manifest's source run (precision must be fp32);
    onnxruntime: <kind>.<precision>.onnx on `provider` (cpu | cuda | tensorrt);
    trt: the cached plan for <precision> matching this machine (and `batches`, if given).
    """
    from toolkit.artifact import read_manifest

    d = Path(artifact_dir)
    m = manifest or read_manifest(d)
    if kind == "torch":
        if precision != "fp32":
            raise ValueError(f"the torch engine is the fp32 reference; {precision} runs on onnxruntime or trt")
        return _torch_reference(m)
    if kind not in KINDS:
        raise ValueError(f"engine must be one of {KINDS}, got {kind!r}")
    if precision not in m["precisions"]:
        raise ValueError(f"{d} has no {precision} variant (it has {sorted(m['precisions'])})")
    if kind == "onnxruntime":
        from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(d / m["precisions"][precision]["file"], provider=provider)
    from toolkit.engines.trt_engine import TrtEngine, find_plan, machine, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"trt engine unavailable: {reason}")
    return TrtEngine(find_plan(d, m, precision, machine(), batches))


def _torch_reference(m: dict) -> Engine:
    from toolkit.engines.torch_engine import TorchEngine
    from toolkit.io import sha256_file

    weights = {"detector": "model.safetensors", "purifier": "student.safetensors"}
    if m["kind"] not in weights:
        raise ValueError(f"no torch reference for artifact kind {m['kind']!r}")
    run = Path(m["source_run"])
    if not run.is_dir():
        raise FileNotFoundError(f"the torch reference needs the source run {run} named in the manifest")
    if m.get("source_sha256") and sha256_file(run / weights[m["kind"]]) != m["source_sha256"]:
        raise ValueError(f"{run}/{weights[m['kind']]} changed since the export: it is not this artifact's reference")
    if m["kind"] == "purifier":
        from toolkit.models.purifier import OneStepPurifier
        from toolkit.pipelines.purifier import load_purifiers

        model = OneStepPurifier(load_purifiers(run)[0]["student"]).eval()
    else:
        from toolkit.models.detector import load_deployed_detector

        model, _ = load_deployed_detector(run)
    specs = [TensorSpec.from_dict(d) for d in m["inputs"]], [TensorSpec.from_dict(d) for d in m["outputs"]]
    return TorchEngine(model, *specs)
