"""`toolkit calibrate --repair`: an int8 file that fails its gate, here or on x86 CPUs without VNNI, made to pass
by keeping the fewest layers in float, at 7-bit weights or with pair-safe 8-bit weights (toolkit/repair.py
searches; this module says what to keep and why).

Two failures, two remedies, in this order:

1. **The gate fails on this CPU** (quantization error): the quantized layers are ranked by the error each adds
   under int8 (`toolkit debug`'s proxy, on calibration images: the ranking reads no label), and the shortest prefix
   of that ranking is kept in float (onnxruntime's `nodes_to_exclude`) until the gate passes here.
2. **The gate fails for CPUs without VNNI** (int16 pair sums saturating in onnxruntime's U8S8 kernel,
   calibration/saturation.py): the layers that saturate are ranked by the error each adds under the exact
   emulation, and the shortest prefix that makes the gate pass there *and* here gets weights that cannot saturate
   and keep int8 speed, per layer whichever changes that layer's weights less (`saturation.SEVEN_BIT_ADDED_ERROR`):
   - **pair-safe 8-bit weights** (`saturation.pair_safe`): only the weight pairs that could saturate give up their
     excess over |w_e| + |w_o| = 128; every other weight keeps 8 bits (bell-shaped, trained weights: few pairs).
   - **7-bit weights** (onnxruntime's `TensorQuantOverrides` `reduce_range` on that weight): every weight of the
     layer at half the resolution (uniform random-init weights, where a quarter of the pairs could saturate).
   When no prefix passes, the same ranking is kept in float instead.

Every trial quantizes again from the calibration's own ranges (no second calibration) and is judged by the gate's
metrics on the gate's images; the record (what was kept, the ranking, every trial) is sealed in the manifest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np


def quantized_nodes(int8_model, op_types) -> tuple[list[str], list[str]]:
    """-> (names of the nodes of `op_types` that take a DequantizeLinear input, those of them with a quantized
    weight initializer), in graph order."""
    producer = {o: n for n in int8_model.graph.node for o in n.output}
    inits = {t.name for t in int8_model.graph.initializer}
    quantized, weighted = [], []
    for n in int8_model.graph.node:
        if n.op_type not in op_types:
            continue
        dq = [producer.get(i) for i in n.input]
        if not any(d is not None and d.op_type == "DequantizeLinear" for d in dq):
            continue
        quantized.append(n.name)
        w = dq[1] if len(dq) > 1 else None
        if w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits:
            weighted.append(n.name)
    return quantized, weighted


def repair_int8(kind, fp32: Path, int8: Path, cfg, workdir: Path, rank_images: np.ndarray,
                judge: Callable[[Path, bool], tuple[dict, dict | None]], native: dict, no_vnni: dict | None,
                emulator_factory=None, log=print, progress: bool = True) -> dict:  # fmt: skip
    """Repair the int8 file at `int8` in place (it failed: `native` is its gate result here, `no_vnni` its verdict
    for CPUs without VNNI or None). `judge(path, native_only)` -> (gate result here, no-VNNI verdict or None), the
    calibration's own judges; `emulator_factory`: calibration.saturation.NoVnniEmulator. -> {"passed", "summary"
    (the quantization summary of the file now at `int8`, None when that is still the calibrated one), "native",
    "no_vnni", "record"}."""
    import onnx

    from calibration.quantize import pair_safe_errors, quantize
    from calibration.saturation import SEVEN_BIT_ADDED_ERROR
    from toolkit.layerwise import as_json, compare_graphs, ranked_layers
    from toolkit.repair import fewest
    from toolkit.timing import speed

    t0 = time.perf_counter()
    quantized, weighted = quantized_nodes(onnx.load(str(int8), load_external_data=False), cfg.op_types)
    state = {"float": [], "bit7": [], "pairsafe": [], "native": native, "no_vnni": no_vnni}
    # what the file at `int8` holds and its quantization summary (quantizing is deterministic from the ranges);
    # None: the calibrated file, whose summary the caller has
    written: dict = {"now": ([], [], []), "summary": None}
    record: dict = {"quantized_nodes": len(quantized), "ranking_images": len(rank_images), "steps": []}
    errors: dict[str, float] = {}  # node -> what pair-safe weights would add to its weight error (8-bit units)

    def write(floats: list[str], bit7: list[str], pairsafe: list[str]) -> None:
        if written["now"] != (floats, bit7, pairsafe):
            c = replace(cfg, exclude_nodes=[*cfg.exclude_nodes, *floats], weights_7bit=bit7, weights_pairsafe=pairsafe)
            written.update(now=(list(floats), list(bit7), list(pairsafe)),
                           summary=quantize(fp32, int8, None, kind.input_name, c, workdir))  # fmt: skip

    def now() -> tuple[list[str], list[str], list[str]]:
        return state["float"], state["bit7"], state["pairsafe"]

    def trial_for(action: str, with_no_vnni: bool):
        def trial(kept: list[str]) -> dict:
            floats = state["float"] + (kept if action == "float" else [])
            # no saturation: each layer gets whichever of pair-safe and 7-bit weights changes its weights less
            unsat = kept if action == "no saturation" else []
            safe = [n for n in unsat if errors.get(n, np.inf) < SEVEN_BIT_ADDED_ERROR]
            bit7 = state["bit7"] + [n for n in unsat if n not in safe]
            pairsafe = state["pairsafe"] + safe
            write(floats, bit7, pairsafe)
            res, nv = judge(int8, not with_no_vnni)
            ok = res["passed"] and (not with_no_vnni or (nv is not None and nv["passed"]))
            s = res["stats"]
            line = _line("here", s)
            if with_no_vnni and nv is not None:
                line += "; " + _line("no VNNI", nv)
            return {"passed": ok, "summary": line, "res": res, "nv": nv, "floats": floats, "bit7": bit7,
                    "pairsafe": pairsafe}  # fmt: skip

        return trial

    def step(name: str, action: str, rep: dict, among: list[str], with_no_vnni: bool) -> bool:
        rows = ranked_layers(rep, among)
        ranked = [r["node"] for r in rows]
        log(f"repair ({name}): {len(ranked)} layers ranked by the error they add; keeping the fewest {action} ...")
        found = fewest(ranked, trial_for(action, with_no_vnni), log, f"layers ({action})")
        cols = ("node", "op", "added_error", "sqnr_db", "saturated_share")
        record["steps"].append({"failure": name, "action": action,
                                "ranked": [{k: r[k] for k in cols if k in r} for r in rows],
                                "kept": found["kept"], "trials": found["trials"]})  # fmt: skip
        if found["kept"] is None:
            return False
        r = found["result"]
        state.update(float=r["floats"], bit7=r["bit7"], pairsafe=r["pairsafe"], native=r["res"])
        if with_no_vnni:
            state["no_vnni"] = r["nv"]
        return True

    def rank(emulated: bool) -> dict:
        write(*now())
        return compare_graphs(kind, fp32, int8, rank_images, "int8", no_vnni=emulator_factory if emulated else None,
                              progress=progress, log=log, desc=f"{len(rank_images)} calibration images")  # fmt: skip

    full = workdir / "full.int8.onnx"  # the calibrated file as it was, for the speed kept
    shutil.copyfile(int8, full)
    ok = True
    if not native["passed"]:
        ok = step("the gate on this CPU", "float", rank(False), quantized, False)
        if ok and no_vnni is not None:  # the file changed: judge it for CPUs without VNNI before repairing that
            write(*now())
            state["native"], state["no_vnni"] = judge(int8, False)
    if ok and state["no_vnni"] is not None and not state["no_vnni"]["passed"]:
        rep = rank(True)
        saturating = {r["node"] for r in rep["layers"] if (r.get("saturated_share") or 0) > 0}
        among = [n for n in weighted if n in saturating and n not in state["float"]]
        why = "the gate on x86 CPUs without VNNI"
        errors.update(pair_safe_errors(onnx.load(str(full)), among))
        record["pair_safe_added_error"] = {n: round(errors[n], 4) for n in among}
        ok = step(why, "no saturation", rep, among, True) or step(
            why, "float", rep, [n for n in quantized if n not in state["float"]], True
        )
    write(*now())  # the search may have ended on another trial than the one it chose
    summary = written["summary"]
    if ok:
        sp = speed({"fp32": fp32, "full int8": full, "repaired int8": int8}, rank_images[:8], kind.input_name)
        ms = sp["ms_per_image"]
        record["speed"] = {**sp, "repaired_vs_full_int8": ms["full int8"] / ms["repaired int8"],
                           "repaired_vs_fp32": ms["fp32"] / ms["repaired int8"]}  # fmt: skip
        log(
            "repair: speed at batch {batch}: {fp32:.2f} / {full:.2f} / {rep:.2f} ms per image (fp32 / full int8 / "
            "repaired int8; {kept:.0%} of the full int8 file's speed)".format(
                batch=record["speed"]["batch"],
                fp32=record["speed"]["ms_per_image"]["fp32"],
                full=record["speed"]["ms_per_image"]["full int8"],
                rep=record["speed"]["ms_per_image"]["repaired int8"],
                kept=record["speed"]["repaired_vs_full_int8"],
            )
        )
    record.update(kept_in_float=state["float"], weights_7bit=state["bit7"], weights_pairsafe=state["pairsafe"],
                  pairsafe_pairs_changed=(summary or {}).get("pairsafe_pairs_changed", 0),
                  share_kept=round((len(state["float"]) + len(state["bit7"])) / max(len(quantized), 1), 4),
                  seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    passed = ok and state["native"]["passed"] and (state["no_vnni"] is None or state["no_vnni"]["passed"])
    return {"passed": passed, "summary": summary, "native": state["native"], "no_vnni": state["no_vnni"],
            "record": as_json(record)}  # fmt: skip


def _line(where: str, s: dict) -> str:
    cos = f", feature cosine {s['min_cosine_feature']:.4f}" if s.get("min_cosine_feature") is not None else ""
    return (f"{where}: agreement {100 * s['decision_agreement']:.1f}%, AUC drop {s['auc_drop_points']:+.2f}, "
            f"accuracy drop {s['acc_drop_points']:+.2f}{cos}")  # fmt: skip
