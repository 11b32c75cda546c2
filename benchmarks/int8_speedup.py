"""INT8 (Q/DQ) against fp32 in ONNX Runtime, measured interleaved (calibration issue).

A single bench run times fp32 and then int8, minutes apart; on a shared 2-core machine the clock drifts
by a few percent between the two, which is as large as the margin on a 1.7x target. This benchmark
alternates: each round times fp32 then int8 back to back (warm-up, then `--iters` timed calls each),
and the speed-up is reported per round, as the median over rounds with its min and max.

Run on calibrated artifacts (`toolkit calibrate`; the benchmark reads the manifest, never re-quantizes):
  .venv/bin/python -m benchmarks.int8_speedup ARTIFACT [ARTIFACT ...] [--batches 1 8] [--rounds 5]
Both engines are opened through `open_engine`, so they run exactly as `toolkit bench`/`infer` run them.
The accuracy columns are the int8 gate's numbers recorded in the manifest (held-out labelled images).
Writes benchmarks/results/int8_speedup.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.environment import cpu_line, environment
from benchmarks.harness import time_engine
from benchmarks.report import command_line, write_result

RESULTS = Path(__file__).parent / "results"


def bench_artifact(
    artifact: Path, batches: list[int], rounds: int, warmup: int, iters: int, min_seconds: float = 1.0, log=print
) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.engines import open_engine

    art = Artifact.open(artifact)
    m = art.manifest
    if "int8" not in m["precisions"]:
        raise SystemExit(f"{artifact}: no int8 variant in the manifest; run 'toolkit calibrate {artifact}' first")
    s = m["preprocess"]["size"]
    gate = m["gates"]["int8"]
    out = {
        "model": art.model_name,
        "artifact": str(artifact),
        "input_size": s,
        "int8_gate": gate,
        "batches": {},
    }
    with (
        open_engine(art, "onnxruntime", "fp32") as fp32,
        open_engine(art, "onnxruntime", "int8") as int8,
    ):
        for b in batches:
            feed = {"images": np.random.default_rng(0).standard_normal((b, 3, s, s)).astype(np.float32)}
            per_round = []
            for r in range(rounds):
                # at least `iters` calls and at least `min_seconds` (sub-ms models) per engine
                tf = time_engine(fp32, feed, warmup, iters, min_seconds or None, min_iterations=iters)
                ti = time_engine(int8, feed, warmup, iters, min_seconds or None, min_iterations=iters)
                per_round.append({"fp32": tf, "int8": ti, "speedup_p50": tf["p50_ms"] / ti["p50_ms"]})
                log(
                    f"{out['model']} batch {b} round {r + 1}/{rounds}: fp32 p50 {tf['p50_ms']:.2f} ms, "
                    f"int8 p50 {ti['p50_ms']:.2f} ms, {per_round[-1]['speedup_p50']:.3f}x"
                )
            sp = [x["speedup_p50"] for x in per_round]
            out["batches"][b] = {
                "rounds": per_round,
                "fp32_p50_ms": float(np.median([x["fp32"]["p50_ms"] for x in per_round])),
                "int8_p50_ms": float(np.median([x["int8"]["p50_ms"] for x in per_round])),
                "speedup_median": float(np.median(sp)),
                "speedup_min": float(min(sp)),
                "speedup_max": float(max(sp)),
            }
    return out


def markdown(res: list[dict], env: dict, command: str, rounds: int, warmup: int, iters: int, min_s: float) -> str:
    lines = [
        "# INT8 against fp32, ONNX Runtime, interleaved rounds",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, onnxruntime {env['versions']['onnxruntime']}; "
        f"engine-only (input prepared before the clock); {rounds} rounds, each fp32 then int8 back to back, "
        f"warm-up {warmup}, then at least {iters} timed calls and {min_s:g} s per engine per round. "
        "Speed-up = fp32 p50 / int8 p50 "
        "per round; the table gives the median over rounds and its range.  ",
        "Accuracy: the int8 gate recorded in the manifest (int8 minus fp32, both in ONNX Runtime, on "
        "held-out labelled images disjoint from the calibration set).",
        "",
        "| model | batch | fp32 p50 ms | int8 p50 ms | speed-up (median) | min-max over rounds | "
        "ΔAUC (pts) | feature cos (min) | agreement | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        st = r["int8_gate"]["stats"]
        model = r["model"].replace("|", r"\|")
        for b, v in r["batches"].items():
            lines.append(
                f"| {model} | {b} | {v['fp32_p50_ms']:.2f} | {v['int8_p50_ms']:.2f} | "
                f"**{v['speedup_median']:.2f}x** | {v['speedup_min']:.3f}-{v['speedup_max']:.3f} | "
                f"{-st['auc_drop_points']:+.2f} (n={st['n']}) | {st['min_cosine_feature']:.4f} | "
                f"{st['decision_agreement'] * 100:.2f}% | {'passed' if r['int8_gate']['passed'] else 'FAILED'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path, help="calibrated artifact directories")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="at least this many timed calls per engine per round")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="and at least this long (sub-ms models)")
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_speedup")
    args = ap.parse_args(argv)
    command = command_line("benchmarks.int8_speedup", argv)
    env = environment()
    res = [
        bench_artifact(a, args.batches, args.rounds, args.warmup, args.iters, args.min_seconds) for a in args.artifacts
    ]
    md = markdown(res, env, command, args.rounds, args.warmup, args.iters, args.min_seconds)
    write_result(args.out, {"command": command, "environment": env, "results": res}, md)


if __name__ == "__main__":
    main()
