"""Is `reduce_range` (7-bit weights) needed on x86 CPUs without VNNI? The int8 gate's two verdicts, tabulated.

Run on calibrated artifacts (`toolkit calibrate ... --full-range` and `--reduce-range`; the benchmark reads each
artifact's int8_report.json, never re-quantizes):
      .venv/bin/python -m benchmarks.int8_saturation LABEL=ARTIFACT [LABEL=ARTIFACT ...]
Every calibration gates its int8 file twice against fp32 on the same held-out labelled images: on the CPU it ran
on, and under an exact emulation of onnxruntime's int8 GEMM on x86 without VNNI (uint8 activations, adjacent
products summed in int16 with saturation; calibration/saturation.py, tested against the kernel's arithmetic).
Writes benchmarks/results/int8_saturation.{md,json} with the machine fingerprint and the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.io import read_json

RESULTS = Path(__file__).parent / "results"


def rows(reports: list[tuple[str, dict]]) -> list[dict]:
    out = []
    for label, r in reports:
        q, nv = r["quantization"], r["no_vnni"]
        out.append({
            "model": label,
            "method": q["method"],
            "weights": "7-bit" if q["reduce_range"] else "8-bit",
            "fp32_auc": r["fp32"]["auc"],
            "native": {"auc_drop_points": r["auc_drop_points"], "agreement": r["parity"]["decision_agreement"],
                       "max_abs_logit": r["parity"]["max_abs_logit"], "passed": r["passed"]},
            "no_vnni": {"auc_drop_points": nv["auc_drop_points"], "agreement": nv["decision_agreement"],
                        "max_abs_logit": nv["max_abs_logit"], "passed": nv["passed"]},
            "candidate_pairs": nv["candidate_pairs"],
            "no_vnni_judged": nv["judged"],
            "saturated_fraction": nv.get("saturated_fraction"),
            "pairs": nv["pairs"],
            "eval_n": r["eval_n"],
            "gate_max_auc_drop": r["gate"]["max_auc_drop_points"],
        })  # fmt: skip
    return out


def markdown(table: list[dict], command: str, env: dict) -> str:
    def cell(v: dict) -> str:
        return (
            f"{v['auc_drop_points']:+.2f} / {100 * v['agreement']:.1f}% / {v['max_abs_logit']:.3f} / "
            f"{'pass' if v['passed'] else 'FAIL'}"
        )

    lines = [
        "# INT8 on x86 without VNNI: is reduce_range needed?",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, onnxruntime {env['versions']['onnxruntime']}  ",
        "Each cell: AUC drop against fp32 (points) / decision agreement at the artifact's threshold / max |Δlogit| / "
        f"gate (AUC drop <= {table[0]['gate_max_auc_drop']}). *This CPU* is the machine above (with VNNI its int8 "
        "products go to int32: nothing saturates). *Without VNNI (emulated)* is onnxruntime's U8S8 kernel on AVX2 or "
        "AVX-512 without VNNI, computed exactly by rewriting the graph (calibration/saturation.py). Candidate pairs: "
        "same-sign weight pairs with |w_even| + |w_odd| >= 129, the only ones that can leave int16; sums that "
        "saturated: the share of all GEMM output sums (row x output, every weighted layer) that lost something.",
        "",
        "| model | calibration | weights | fp32 AUC | this CPU | without VNNI (emulated) | judged on | candidate pairs "
        "| sums that saturated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        frac = t["candidate_pairs"] / max(t["pairs"], 1)
        sat = "-" if t["saturated_fraction"] is None else f"{100 * t['saturated_fraction']:.1f}%"
        lines.append(
            f"| {t['model']} | {t['method']} | {t['weights']} | {100 * t['fp32_auc']:.2f} | {cell(t['native'])} | "
            f"{cell(t['no_vnni'])} | {t['no_vnni_judged']} ({t['eval_n']} on this CPU) | {100 * frac:.2f}% | {sat} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", help="LABEL=ARTIFACT, each calibrated (int8_report.json)")
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_saturation")
    args = ap.parse_args(argv)
    reports = []
    for spec in args.artifacts:  # one row each; labels may repeat (the calibration and weights columns differ)
        label, _, path = spec.partition("=")
        report = Path(path) / "int8_report.json"
        if not report.is_file():
            raise SystemExit(f"{path}: no int8_report.json; run 'toolkit calibrate {path}' first")
        reports.append((label, read_json(report)))
        if not reports[-1][1].get("no_vnni"):
            raise SystemExit(f"{report}: not judged for CPUs without VNNI (calibrated before it existed, or with "
                             "--no-vnni-n 0); calibrate again")  # fmt: skip
    table = rows(reports)
    command = command_line("benchmarks.int8_saturation", argv)
    env = environment()
    write_result(args.out, {"command": command, "environment": env, "rows": table}, markdown(table, command, env))


if __name__ == "__main__":
    main()
