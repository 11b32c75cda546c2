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
    repair: bool = False,
):
    """Export the run's deployed model; -> the written, verified `Artifact`. `repair`: a failed fp16 gate first keeps
    the fewest layers in fp32 that make it pass (ranked by toolkit debug's error proxy; toolkit/repair.py).

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
    return export_model(kind, spec, run_dir, out_dir, precisions, gates, log, external_data_bytes, repair)


def export_model(kind, spec, run_dir: Path, out_dir, precisions, gates: dict, log=print,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES, repair: bool = False):  # fmt: skip
    """-> the exported `Artifact` at `out_dir`, verified as it was written (not re-opened)."""
    from toolkit.artifact import UNLISTED_DIRS, Artifact
    from toolkit.staging import Staging

    final = Path(out_dir)
    _check_out_dir(final)
    # everything is written into a staging directory beside `out_dir` and swapped in at the end: a failed gate,
    # a crash or a kill leaves an existing artifact as it was; the next export removes what a killed one left
    with Staging(final, carry_dirs=UNLISTED_DIRS, log=log) as st:
        art = _write_variants(kind, spec, run_dir, st.dir, precisions, gates, log, external_data_bytes, repair)
        st.commit()
    return Artifact(final, art.manifest)


def _check_out_dir(out: Path) -> None:
    from toolkit.artifact import MANIFEST
    from toolkit.safe_paths import check_not_link

    if check_not_link(out) and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ValueError(f"{out} exists and is not an artifact directory: choose another --out")


def _write_variants(kind, spec, run_dir: Path, out_dir: Path, precisions, gates, log, external_data_bytes,
                    repair: bool = False) -> None:  # fmt: skip
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
    comparator = Comparator(kind, spec.verify_feeds, spec.threshold, spec.verify_labels)
    with TorchEngine(spec.module, inputs, outputs) as ref:
        comparator.set_reference(ref)
    results = {}
    for precision in variants:
        log(f"verifying {precision} against PyTorch on {sum(len(x) for x in spec.verify_feeds)} inputs ...")
        got = comparator.run(lambda p=precision: OnnxRuntimeEngine(out_dir / files[p]))  # one session at a time
        # a reduced precision decides at its own operating point, re-fitted on labelled verify images and sealed
        res = comparator.compare(got, gates[precision], "onnxruntime-cpu", refit=precision != "fp32")
        if precision == "fp16" and repair and not res["passed"]:
            res = _repair_fp16(kind, spec, out_dir, files, comparator, gates["fp16"], res, variants,
                               external_data_bytes, log)  # fmt: skip
        stats = res["stats"]
        if op := stats.pop("operating_point", None):
            variants[precision]["operating_point"] = op
        stats = {k: v for k, v in stats.items() if k not in ("metrics", "reference_metrics")}
        results[precision] = {**{k: res[k] for k in ("passed", "gate", "engine", "unmeasured") if k in res},
                              "stats": stats}  # fmt: skip
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


def _repair_fp16(kind, spec, out_dir: Path, files: dict, comparator, gate, failed: dict, variants: dict,
                 external_data_bytes, log) -> dict:  # fmt: skip
    """The fp16 file failed its gate: rank its fp16 layers by the error each adds (toolkit debug, on up to 16 of the
    verify inputs) and keep the fewest of them in fp32 that pass (toolkit/repair.py). The file at `files["fp16"]`
    becomes that one, and `variants["fp16"]` records what was kept, the ranking and the trials; -> its gate result,
    or `failed` (the unrepaired file's) when even keeping every ranked layer does not pass: the export then fails
    and its staging directory goes."""
    import numpy as np
    import onnx

    from export.precision import fp16_nodes
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.layerwise import as_json, compare_graphs, ranked_layers
    from toolkit.repair import fewest

    fp32, fp16 = out_dir / files["fp32"], out_dir / files["fp16"]
    x = np.concatenate(spec.verify_feeds)[:16]
    rep = compare_graphs(kind, fp32, fp16, x, "fp16", progress=False, log=log, desc=f"{len(x)} verify inputs")
    among = fp16_nodes(onnx.load(str(fp32), load_external_data=False), spec.fp16_keep_ops, spec.fp16_tail_after)
    rows = ranked_layers(rep, among)
    log(f"repair: the fp16 gate failed; {len(rows)} fp16 layers ranked by the error they add (first below the "
        f"thresholds: {(rep['first_failing'] or {}).get('node', 'none')}); keeping the fewest in fp32 ...")  # fmt: skip
    written: dict = {}

    def write(kept: list[str]) -> dict:
        written["summary"] = write_fp16(fp32, fp16, spec.fp16_keep_ops, kept, spec.fp16_tail_after,
                                        external_data_bytes)  # fmt: skip
        written["kept"] = list(kept)
        return written["summary"]

    def trial(kept: list[str]) -> dict:
        write(kept)
        res = comparator.compare(comparator.run(lambda: OnnxRuntimeEngine(fp16)), gate, "onnxruntime-cpu", refit=True)
        return {"passed": res["passed"], "res": res, "summary": "; ".join(res["failures"]) or "gate passed"}

    found = fewest([r["node"] for r in rows], trial, log, "layers (fp32)")
    kept = found["kept"]
    if kept is None:
        return failed
    if written["kept"] != kept:  # the search ended on another trial than the one it chose
        write(kept)
    cols = ("node", "op", "added_error", "sqnr_db")
    variants["fp16"].update(written["summary"], repair=as_json({
        "kept_in_fp32": kept, "passed": True, "first_failing": rep["first_failing"],
        "ranked": [{k: r[k] for k in cols} for r in rows[:64]], "trials": found["trials"],
        "ranking_inputs": len(x)}))  # fmt: skip
    return found["result"]["res"]
