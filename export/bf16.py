"""bf16 as an artifact precision: the fp32 graph executed in bf16 by OpenVINO, with its own gate.

bf16 is not a file: it is how OpenVINO's CPU plugin may run the fp32 graph (AVX512_BF16 / AMX), about 2x
its f32 speed on such CPUs (benchmarks/results/engines_cpu.md). Because it changes every layer's
arithmetic, it is gated by the one policy of every reduced precision (toolkit.compare.PrecisionGate), on held-out
labelled images, against the same runtime in f32, at its own sealed operating point. The variant is recorded as
`precisions.bf16 = {file: <fp32 file>, execution: bf16, engines: [openvino], operating_point: ...}`; on a CPU
without native bf16 it is refused with the reason (emulated bf16 would be slower than f32).
"""

from __future__ import annotations

from pathlib import Path


def add_bf16(artifact, eval_images: str | Path, gate=None, eval_n: int | None = 1000, seed: int = 0,
             log=print) -> dict:  # fmt: skip
    """Gate the bf16 execution of the fp32 graph on `eval_images`; on success add it to the manifest. `artifact`: an
    opened `Artifact` (not verified again) or its directory. -> result (the new artifact under "artifact_object")."""

    from toolkit import kinds
    from toolkit.artifact import Artifact, GateFailed
    from toolkit.compare import Comparator
    from toolkit.data.loader import load_labelled, sample_labelled
    from toolkit.engines.openvino_engine import OpenVinoEngine, bf16_unavailable_reason

    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    kind = kinds.for_artifact(art)
    kind.require("detects", "--precision bf16 (gated on AUC)")
    gate = gate or kind.gates()["bf16"]
    if reason := bf16_unavailable_reason():
        raise RuntimeError(f"bf16 refused: {reason}")
    paths, labels = sample_labelled(eval_images, eval_n, seed)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"{eval_images}: the bf16 gate needs both real and generated images for AUC")
    feeds, labels = load_labelled(paths, labels, art.preprocess)
    log(f"gating bf16 (OpenVINO) against f32 on {len(labels)} held-out images from {eval_images} ...")
    comparator = Comparator(kind, feeds, art.threshold, labels)
    fp32 = art.onnx_path("fp32")
    comparator.reference = comparator.run(lambda: OpenVinoEngine(fp32, "f32"))
    res = comparator.compare(comparator.run(lambda: OpenVinoEngine(fp32, "bf16")), gate, "openvino-cpu-bf16",
                             refit=True)  # fmt: skip
    stats = {k: v for k, v in res["stats"].items() if k not in ("metrics", "reference_metrics", "operating_point")}
    if not res["passed"]:
        raise GateFailed(f"bf16 gate failed for {art.dir}: " + "; ".join(res["failures"]))
    file = art.require("fp32")["file"]
    precisions = {**art.precisions, "bf16": {"file": file, "execution": "bf16", "engines": ["openvino"],
                                             "operating_point": res["stats"]["operating_point"]}}  # fmt: skip
    gates = {**art.gates, "bf16": {"passed": True, "gate": res["gate"], "stats": stats, "engine": "openvino-cpu",
                                   "eval_images": str(Path(eval_images).resolve())}}  # fmt: skip
    new = art.update(precisions=precisions, gates=gates)
    return {"artifact": str(art.dir), **res, "artifact_object": new}
