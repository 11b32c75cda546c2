"""One Engine interface (base.py), kinds `torch`, `onnxruntime`, `openvino` and `trt`; `open_engine` opens one."""

from __future__ import annotations

from pathlib import Path

from toolkit.engines.base import Engine, TensorSpec

KINDS = ("torch", "onnxruntime", "openvino", "trt")

__all__ = ["KINDS", "Engine", "TensorSpec", "open_engine"]


def open_engine(
    artifact,
    kind: str,
    precision: str = "fp32",
    provider: str = "cpu",
    batches: tuple[int, int, int] | None = None,
    threads: int | None = None,
) -> Engine:
    """An engine for an artifact (an `Artifact`, or its directory, opened and verified here).

    torch: the PyTorch fp32 reference rebuilt from the artifact's source run (precision must be fp32);
    onnxruntime: <kind>.<precision>.onnx on `provider` (cpu | cuda | tensorrt: TensorRT, then CUDA, then CPU,
    its engine cache in the artifact's plans/onnxruntime-trt/);
    openvino: the same file on OpenVINO's CPU plugin, executed in f32 (never its silent bf16 default);
    trt: the cached plan for <precision> matching this machine (and `batches`, if given).
    `threads` caps CPU threads (onnxruntime intra-op; torch's own pool), e.g. one engine per core in an actor pool.
    """
    from toolkit.artifact import Artifact

    art = artifact if isinstance(artifact, Artifact) else Artifact.open(Path(artifact))
    if kind not in KINDS:
        raise ValueError(f"engine must be one of {KINDS}, got {kind!r}")
    if kind == "torch":
        if precision != "fp32":
            raise ValueError(f"the torch engine is the fp32 reference; {precision} runs on onnxruntime or trt")
        if threads:
            import torch

            torch.set_num_threads(threads)
        return reference_engine(art)
    variant = art.require(precision)
    if variant.get("engines") and kind not in variant["engines"]:
        raise ValueError(f"{precision} runs on {', '.join(variant['engines'])} only (it is an execution precision)")
    if kind == "onnxruntime":
        from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

        refused = int8_refusal(art) if precision == "int8" and provider == "cpu" else None
        if refused:
            raise RuntimeError(refused)

        from toolkit.engines.trt_engine import PLANS

        cache = art.dir / PLANS / "onnxruntime-trt" if provider == "tensorrt" else None
        return OnnxRuntimeEngine(art.onnx_path(precision), provider=provider, threads=threads, cache_dir=cache)
    if kind == "openvino":
        from toolkit.engines.openvino_engine import OpenVinoEngine

        return OpenVinoEngine(art.onnx_path(precision), execution=variant.get("execution", "f32"), threads=threads)
    from toolkit.engines.trt_engine import TrtEngine, find_plan, machine, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"trt engine unavailable: {reason}")
    return TrtEngine(find_plan(art, precision, machine(), batches))


def int8_refusal(art, flags: list[str] | None = None) -> str | None:
    """Why onnxruntime's CPU kernels must not run the artifact's int8 file on this machine, or None. On x86
    without VNNI (AVX2, AVX-512 without VNNI) its U8S8 GEMM adds products in saturating int16 pairs; calibration
    gates every int8 file under an exact emulation of that (calibration/saturation.py) and records the verdict."""
    from toolkit.machine import int8_pairs_saturate

    verdict = art.gates.get("int8", {}).get("no_vnni")
    if not int8_pairs_saturate(flags) or verdict is None or verdict["passed"]:
        return None
    return (
        f"{art.dir}: its int8 file fails its gate on this CPU (x86 without VNNI, where onnxruntime's int8 pair sums "
        f"saturate: {', '.join(verdict['failures'])}, judged at calibration); recalibrate with --repair (the fewest "
        "saturating layers at 7-bit weights) or here (7-bit weights are chosen on this CPU), or run fp32 / fp16"
    )


def available_kinds() -> tuple[str, ...]:
    """The engine kinds that can run on this machine (torch and onnxruntime always; openvino, trt if present)."""
    import importlib.util

    from toolkit.engines.trt_engine import unavailable_reason

    have = ["torch", "onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        have.append("openvino")
    if unavailable_reason() is None:
        have.append("trt")
    return tuple(have)


def reference_engine(art) -> Engine:
    """The PyTorch fp32 reference of an artifact, from its source run (ReferenceMissing when it is gone)."""
    from toolkit import kinds
    from toolkit.engines.torch_engine import TorchEngine

    kind = kinds.for_artifact(art)
    model = kind.load_reference(art.reference_run(kind.weights_file))
    return TorchEngine(model, art.inputs, art.outputs)
