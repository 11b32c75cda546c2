"""The no-VNNI emulation against the real thing: on an x86 CPU without VNNI, onnxruntime's own int8 kernels (the
saturating VPMADDUBSW pair sums the emulation reproduces) against `calibration.saturation.NoVnniEmulator` and against
the exact sums (graph optimisations off) -> benchmarks/results/no_vnni_check.{json,md}. The emulator comes
through toolkit.cli.workflows.emulate_no_vnni (benchmarks do not import calibration).

Every 8-bit verdict for CPUs without VNNI made on a CPU with VNNI rests on the emulation; this is its check. Each
artifact is calibrated with 8-bit weights (`--full-range`, gates open: the file is the object here), then the same
images run three ways. Refuses to run on a CPU with VNNI (there is nothing native to compare with).

    python -m benchmarks.no_vnni_check --artifact tiny-vit-64=DIR [--artifact ViT-B/16=DIR] \\
        --calib-images CAL --images IMGS [--n 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.precision_repair import OPEN_GATE, _calibrate


def _compare(native: np.ndarray, other: np.ndarray) -> dict:
    a, b = native.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "corr": float(np.corrcoef(a, b)[0, 1])}  # fmt: skip


def check(name: str, src: Path, calib: Path, images: Path, n: int, work: Path, log=print) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.cli.workflows import emulate_no_vnni
    from toolkit.data.loader import discover_images, load_batch
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

    dst = work / name.replace("/", "_")
    _calibrate(src, dst, calib, images, ["--full-range", "--eval-n", "20", *OPEN_GATE], log)
    art = Artifact.open(dst)
    int8 = art.onnx_path("int8")
    x = load_batch([str(p) for p in discover_images(images)[0][:n]], art.preprocess).array
    # the two engines calibration judges with on such a CPU: as any user opens it, and the exact sums
    with OnnxRuntimeEngine(int8) as native_e, OnnxRuntimeEngine(int8, optimize=False) as exact_e:
        feed = {native_e.inputs[0].name: x}
        t = time.perf_counter()
        native = native_e.infer(feed)
        native_t = time.perf_counter() - t
        exact = exact_e.infer(feed)
    outs = [o.name for o in native_e.outputs]
    t = time.perf_counter()
    emulated, counts = emulate_no_vnni(int8, [x[i : i + 16] for i in range(0, len(x), 16)])
    emulated_t = time.perf_counter() - t
    res = {"artifact": str(src), "n": len(x),
           "counts": {k: counts[k] for k in ("weighted_gemms", "candidate_pairs", "pairs")},
           "saturated_fraction": counts.get("saturated_fraction"),
           "seconds": {"native": round(native_t, 2), "emulated": round(emulated_t, 2)}, "outputs": {}}  # fmt: skip
    for k in outs:
        res["outputs"][k] = {"scale": float(np.abs(native[k]).max()), "emulated": _compare(native[k], emulated[k]),
                             "exact": _compare(native[k], exact[k])}  # fmt: skip
    if "logit" in native:
        thr = art.threshold
        d = native["logit"].ravel() > thr
        res["decisions"] = {"emulated": float(np.mean(d == (np.asarray(emulated["logit"]).ravel() > thr))),
                            "exact": float(np.mean(d == (exact["logit"].ravel() > thr)))}  # fmt: skip
    log(f"{name}: {res['outputs']}")
    return res


def markdown(res: dict) -> str:
    lines = [
        "# The no-VNNI emulation against onnxruntime's own kernels on a CPU without VNNI",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['cpu']}; flags {' '.join(res['cpu_flags']) or 'none'}; onnxruntime {res['onnxruntime']}, "
        "2 cores.  ",
        "Each file: 8-bit weights (`toolkit calibrate --full-range`). *Native*: onnxruntime's CPU session as any user "
        "opens it, on this CPU (its U8S8 kernels add u8 x s8 products in saturating int16 pairs). *Emulated*: "
        "`calibration.saturation.NoVnniEmulator` (what a CPU with VNNI uses to judge for this one). *Exact*: the same "
        "file with graph optimisations off (exact integer sums, what CPUs with VNNI compute).",
        "",
        "| model | output | images | native vs emulated: max / mean abs diff, corr | native vs exact: max / mean "
        "abs diff, corr | decisions equal (emulated / exact) | GEMM sums saturated | s native / emulated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in res["models"].items():
        for k, o in m["outputs"].items():
            e, x = o["emulated"], o["exact"]
            dec = m.get("decisions") if k == "logit" else None
            dec_s = f"{100 * dec['emulated']:.1f}% / {100 * dec['exact']:.1f}%" if dec else "-"
            lines.append(
                f"| {name} | {k} (max abs {o['scale']:.3g}) | {m['n']} | {e['max_abs']:.3g} / {e['mean_abs']:.3g}, "
                f"{e['corr']:.5f} | {x['max_abs']:.3g} / {x['mean_abs']:.3g}, {x['corr']:.5f} | {dec_s} | "
                f"{100 * (m['saturated_fraction'] or 0):.0f}% | {m['seconds']['native']} / {m['seconds']['emulated']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    import onnxruntime as ort

    from toolkit.io import write_json, write_text
    from toolkit.machine import cpu_flags, cpu_model, int8_pairs_saturate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--calib-images", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="labelled folder: the images run three ways")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/no_vnni_check"))
    a = ap.parse_args()
    if not int8_pairs_saturate():
        sys.exit(f"no_vnni_check: this CPU ({' '.join(cpu_flags())}) has VNNI or is not x86 AVX2: nothing to check")
    res = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "onnxruntime": ort.__version__, "models": {},
           "command": "python -m benchmarks.no_vnni_check " + " ".join(sys.argv[1:])}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="no-vnni-check-") as tmp:
        for k, _, v in (s.partition("=") for s in a.artifact):
            res["models"][k] = check(k, Path(v), a.calib_images, a.images, a.n, Path(tmp))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), res)
    write_text(a.out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
