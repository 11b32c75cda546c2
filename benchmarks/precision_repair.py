"""Issue 24: `toolkit calibrate --repair` on real artifacts -> benchmarks/results/precision_repair.{json,md}.

For each artifact (a copy; the original is not touched), `toolkit calibrate` as a user runs it: with 8-bit weights
(judged by the one policy here and under the no-VNNI emulation), with 7-bit weights everywhere (`--reduce-range`),
then with `--repair`, whose record (what it kept, every trial) is read back from the sealed manifest. Speed: fp32,
the 8-bit file, the all-7-bit file and the repaired file in onnxruntime on this CPU, in interleaved rounds
(toolkit/timing.py), with the CPU's flags.

    python -m benchmarks.precision_repair --artifact tiny-vit-64=DIR --artifact ViT-B/16=DIR \\
        --calib-images CAL --eval-images EVAL [--eval-n 1000] [--no-vnni-minutes 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

OPEN_GATE = [
    "--gate",
    "int8.max_auc_drop_points=100",
    "--gate",
    "int8.max_acc_drop_points=100",
    "--gate",
    "int8.min_decision_agreement=0",
    "--gate",
    "int8.min_cosine_feature=-1",
    "--no-vnni-n",
    "0",
]


def _calibrate(src: Path, dst: Path, calib: Path, evals: Path, args: list[str], log) -> dict:
    """`toolkit calibrate` on a copy of `src`, as a user runs it (a failed gate exits 2 and keeps its report)."""
    import subprocess
    import sys

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    toolkit = Path(sys.executable).with_name("toolkit")  # the console script of this environment
    cmd = [str(toolkit), "calibrate", str(dst), "--images", str(calib), "--eval-images", str(evals), *args]
    t0 = time.perf_counter()
    log("$ toolkit " + " ".join(cmd[1:]))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 2):
        raise RuntimeError(f"toolkit calibrate exited {p.returncode}: {p.stderr[-2000:]}")
    log((p.stdout + p.stderr).strip().splitlines()[-1][:300])
    report = json.loads((dst / "int8_report.json").read_text())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _verdict(r: dict) -> dict:
    nv = r.get("no_vnni") or {}
    p = r["parity"]
    return {
        "passed_here": r["passed"],
        "here": {
            k: p.get(k) for k in ("auc_drop_points", "acc_drop_points", "decision_agreement", "min_cosine_feature")
        },
        "passed_no_vnni": nv.get("passed"),
        "no_vnni": {k: nv.get(k) for k in ("auc_drop_points", "acc_drop_points", "decision_agreement", "judged")},
    }


def run(artifacts: dict[str, Path], calib: Path, evals: Path, eval_n: int, minutes: float, log=print) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.data.loader import discover_images, load_batch
    from toolkit.machine import cpu_flags, cpu_model, int8_pairs_saturate
    from toolkit.timing import speed

    common = ["--eval-n", str(eval_n), "--no-vnni-minutes", str(minutes)]
    out = {"cpu": cpu_model(), "cpu_flags": [f for f in cpu_flags() if "avx" in f or "amx" in f], "models": {},
           "saturating_cpu": int8_pairs_saturate()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="precision-repair-") as tmp:
        for name, src in artifacts.items():
            work = Path(tmp) / name.replace("/", "_")
            log(f"== {name}: 8-bit, all 7-bit, repaired ==")
            full = _calibrate(src, work / "full", calib, evals, ["--full-range", *common], log)
            all7 = _calibrate(src, work / "all7", calib, evals, ["--reduce-range", *common], log)
            rep = _calibrate(src, work / "repaired", calib, evals, ["--full-range", "--repair", *common], log)
            art = Artifact.open(work / "repaired")  # verifies the seal: the repair record is part of the manifest
            record = art.precisions.get("int8", {}).get("repair") or rep["quantization"].get("repair")
            files = {"fp32": art.onnx_path("fp32")}
            for key, sub, flag in (("8-bit", "full", "--full-range"), ("all 7-bit", "all7", "--reduce-range")):
                files[key] = work / sub / "detector.int8.onnx"
                if not files[key].is_file():  # removed by its failed gate: the same file again, gates open, to time it
                    _calibrate(src, work / f"{sub}-timed", calib, evals, [flag, "--eval-n", "20", *OPEN_GATE], log)
                    files[key] = work / f"{sub}-timed" / "detector.int8.onnx"
            if "int8" in art.precisions:
                files["repaired"] = art.onnx_path("int8")
            x = load_batch([str(p) for p in discover_images(calib)[0][:8]], art.preprocess).array
            sp = speed(files, x, "images")
            out["models"][name] = {
                "artifact": str(src),
                "8-bit": _verdict(full),
                "all 7-bit": _verdict(all7),
                "repaired": _verdict(rep),
                "quantized_nodes": record["quantized_nodes"] if record else None,
                "kept_in_float": record["kept_in_float"] if record else None,
                "weights_7bit": record["weights_7bit"] if record else None,
                "weights_pairsafe": record.get("weights_pairsafe") if record else None,
                "pairsafe_pairs_changed": record.get("pairsafe_pairs_changed") if record else None,
                "share_kept": record["share_kept"] if record else None,
                "repair_seconds": record["seconds"] if record else None,
                "trials": [{"action": s["action"], **t} for s in record["steps"] for t in s["trials"]]
                if record
                else [],
                "speed": sp,
                "seconds": {"8-bit": full["seconds"], "all 7-bit": all7["seconds"], "repaired": rep["seconds"]},
            }
    return out


def markdown(res: dict, command: str) -> str:
    lines = [
        "# Accuracy-aware int8 repair (`toolkit calibrate --repair`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {res['cpu']}; flags {' '.join(res['cpu_flags'])}; onnxruntime CPU, 2 cores.  ",
        "Gate: the one policy of every reduced precision (AUC drop <= 0.5, accuracy drop <= 1 point, decision "
        "agreement >= 95% at each precision's own operating point, feature cosine >= 0.99). "
        + (
            "This CPU has no VNNI: *no VNNI* is onnxruntime's own int8 kernels here, measured (saturating int16 pair "
            "sums), and *here* is the verdict for CPUs with VNNI: the file with graph optimisations off (exact "
            "integer sums, calibration/pipeline.py)."
            if res.get("saturating_cpu")
            else "*No VNNI*: the exact emulation of onnxruntime's saturating int16 pair sums "
            "(calibration/saturation.py), its own operating point."
        ),
        "",
        "| model | file | here: AUC drop / acc drop / agreement | here | no VNNI: AUC drop / acc drop / agreement "
        "| no VNNI | ms/image (batch 8) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(d: dict) -> str:
        if d.get("auc_drop_points") is None:
            return "-"
        return f"{d['auc_drop_points']:+.2f} / {d['acc_drop_points']:+.2f} / {100 * d['decision_agreement']:.1f}%"

    for name, m in res["models"].items():
        ms = m["speed"]["ms_per_image"]
        lines.append(f"| {name} | fp32 | - | - | - | - | {ms['fp32']:.2f} |")
        for f, key in (("8-bit", "8-bit"), ("all 7-bit", "all 7-bit"), ("repaired", "repaired")):
            v = m[key]
            nv = "pass" if v["passed_no_vnni"] else ("FAIL" if v["passed_no_vnni"] is False else "-")
            lines.append(f"| {name} | {f} | {cell(v['here'])} | {'pass' if v['passed_here'] else 'FAIL'} | "
                         f"{cell(v['no_vnni'])} | {nv} | {ms[key]:.2f} |" if key in ms else
                         f"| {name} | {f} | {cell(v['here'])} | {'pass' if v['passed_here'] else 'FAIL'} | "
                         f"{cell(v['no_vnni'])} | {nv} | (file removed: gate failed) |")  # fmt: skip
    lines += ["", "## What repair kept", ""]
    for name, m in res["models"].items():
        floats = ", ".join(m["kept_in_float"] or []) or "none"
        bit7 = ", ".join(m["weights_7bit"] or []) or "none"
        safe = ", ".join(m.get("weights_pairsafe") or []) or "none"
        lines += [
            f"**{name}**: {m['quantized_nodes']} quantized nodes; kept in float: {floats}; 7-bit weights: {bit7} "
            f"({100 * (m['share_kept'] or 0):.0f}% of the quantized nodes); pair-safe 8-bit weights: {safe} "
            f"({m.get('pairsafe_pairs_changed') or 0} weight pairs changed); repair took {m['repair_seconds']} s. "
            "Trials (action, layers kept: verdict):",
            "",
            *[f"- {t['action']}, {t['k']}: {'pass' if t['passed'] else 'fail'} ({t.get('summary', '')}; "
              f"{t['seconds']} s)" for t in m["trials"]],
            "",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    from toolkit.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--calib-images", type=Path, required=True)
    ap.add_argument("--eval-images", type=Path, required=True)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--no-vnni-minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_repair"))
    a = ap.parse_args()
    arts = {k: Path(v) for k, _, v in (s.partition("=") for s in a.artifact)}
    res = run(arts, a.calib_images, a.eval_images, a.eval_n, a.no_vnni_minutes)
    command = "python -m benchmarks.precision_repair " + " ".join(sys.argv[1:])
    res["command"] = command
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out.with_suffix(".json"), res)
    write_text(a.out.with_suffix(".md"), markdown(res, command))
    print(markdown(res, command))


if __name__ == "__main__":
    main()
