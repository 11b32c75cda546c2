"""The export core: run -> fp32 ONNX -> precision variants -> gates -> artifact, for any model kind.

The run's kind (toolkit/kinds/) supplies an `ExportSpec`: the torch module, an example, verification
feeds, its gates, which parts stay fp32 and its own manifest fields. Nothing here knows what a
detector or a purifier is; the one comparator (toolkit/compare.py) judges every precision.
"""

from __future__ import annotations

from pathlib import Path

from export.onnx_export import EXTERNAL_DATA_BYTES, OPSET, export_onnx
from export.precision import write_fp16
from toolkit.artifact import GateFailed

PRECISIONS = ("fp32", "fp16")


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    precisions: tuple[str, ...] = PRECISIONS,
    gate_overrides: dict[tuple[str, str], float] | None = None,
    verify_images: str | Path | None = None,
    verify_n: int | None = None,
    seed: int = 0,
    log=print,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
):
    """Export the run's deployed model; -> the written, verified `Artifact`.

    Raises GateFailed with the numbers (and writes no manifest) when any gate fails; KindError for a
    precision or gate bound that the run's kind does not have.
    """
    from toolkit import kinds

    run_dir = Path(run_dir)
    kind = kinds.for_run(run_dir)
    _check_out_dir(Path(out_dir))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if "int8" in unknown:
        kind.require("int8", "--precision int8")
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; export writes {PRECISIONS} (int8: toolkit calibrate)")
    gates = kind.gates(gate_overrides)
    extra = {} if verify_n is None else {"verify_n": verify_n}
    spec = kind.export_spec(run_dir, Path(verify_images) if verify_images else None, seed=seed, **extra)
    return export_model(kind, spec, run_dir, out_dir, precisions, gates, log, external_data_bytes)


def export_model(kind, spec, run_dir: Path, out_dir, precisions, gates: dict, log=print,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES):  # fmt: skip
    """-> the exported `Artifact` at `out_dir`, verified as it was written (not re-opened)."""
    from toolkit.artifact import UNLISTED_DIRS, Artifact
    from toolkit.staging import Staging

    final = Path(out_dir)
    _check_out_dir(final)
    # everything is written into a staging directory beside `out_dir` and swapped in at the end: a failed gate,
    # a crash or a kill leaves an existing artifact as it was; the next export removes what a killed one left
    with Staging(final, carry_dirs=UNLISTED_DIRS, log=log) as st:
        art = _write_variants(kind, spec, run_dir, st.dir, precisions, gates, log, external_data_bytes)
        st.commit()
    return Artifact(final, art.manifest)


def _check_out_dir(out: Path) -> None:
    from toolkit.artifact import MANIFEST
    from toolkit.safe_paths import check_not_link

    if check_not_link(out) and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ValueError(f"{out} exists and is not an artifact directory: choose another --out")


def _write_variants(kind, spec, run_dir: Path, out_dir: Path, precisions, gates, log, external_data_bytes) -> None:
    from toolkit.artifact import Artifact, tool_versions
    from toolkit.compare import Comparator
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.engines.torch_engine import TorchEngine
    from toolkit.io import sha256_file

    """Write every precision file into `out_dir`, gate each, write the manifest; -> the Artifact there."""
    files = {p: f"{kind.name}.{p}.onnx" for p in ("fp32", *precisions)}
    log(f"exporting {kind.name} to ONNX (opset {OPSET}, dynamic batch) ...")
    inputs, outputs = export_onnx(
        spec.module,
        spec.example,
        out_dir / files["fp32"],
        kind.input_name,
        list(kind.output_names),
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
            spec.fp16_keep_ops,
            (),
            spec.fp16_tail_after,
            external_data_bytes,
        )
        variants["fp16"] = {"file": files["fp16"], "opset": OPSET, **summary}

    for v in variants.values():  # weights beside the graph (large models): hashed in the manifest too
        if (out_dir / (v["file"] + ".data")).is_file():
            v["data_file"] = v["file"] + ".data"
    comparator = Comparator(kind, spec.verify_feeds, spec.threshold)
    with TorchEngine(spec.module, inputs, outputs) as ref:
        comparator.set_reference(ref)
    results = {}
    for precision in variants:
        log(f"verifying {precision} against PyTorch on {sum(len(x) for x in spec.verify_feeds)} inputs ...")
        got = comparator.run(lambda p=precision: OnnxRuntimeEngine(out_dir / files[p]))  # one session at a time
        res = comparator.compare(got, gates[precision], "onnxruntime-cpu")
        results[precision] = {k: res[k] for k in ("passed", "gate", "stats", "engine")}
        if not res["passed"]:
            raise GateFailed(
                f"{precision} export gate failed for {out_dir / files[precision]}: " + "; ".join(res["failures"])
            )

    body = {
        "kind": kind.name,
        **spec.manifest,
        # resolved: the reference must be found from any working directory (bench, infer --engine torch)
        "source_run": str(run_dir.resolve()),
        "source_sha256": sha256_file(run_dir / kind.weights_file),
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "precisions": variants,
        "gates": results,
        "verify_batches": [len(x) for x in spec.verify_feeds],
        "tool_versions": tool_versions(),
    }
    return Artifact.write(out_dir, body)
