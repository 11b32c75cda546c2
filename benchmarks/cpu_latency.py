"""ONNX Runtime fp32 against PyTorch eager on this CPU, side by side in one run (export issue).

Run on artifacts made by `toolkit export` (the benchmark reads their manifests, never re-exports):
  .venv/bin/python -m benchmarks.cpu_latency ARTIFACT [ARTIFACT ...] [--iters 30]
The PyTorch reference is rebuilt from the manifest's source run. Engine-only latency: the input array is
prepared before the clock starts; no host/device copies exist on a CPU.
Writes benchmarks/results/cpu_latency.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.environment import cpu_line, environment
from benchmarks.harness import time_engine
from benchmarks.report import command_line
from toolkit.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"


def bench_artifact(artifact: Path, batches: list[int], warmup: int, iters: int) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.engines import open_engine

    art = Artifact.open(artifact)
    s = art.preprocess["size"]
    out = {"model": art.model_name, "artifact": str(artifact), "input_size": s, "batches": {}}
    with open_engine(art, "torch") as te, open_engine(art, "onnxruntime", "fp32") as oe:
        for b in batches:
            feed = {"images": np.random.default_rng(0).standard_normal((b, 3, s, s)).astype(np.float32)}
            rt = time_engine(te, feed, warmup, iters)
            ro = time_engine(oe, feed, warmup, iters)
            out["batches"][b] = {"torch": rt, "onnxruntime": ro, "speedup_p50": rt["p50_ms"] / ro["p50_ms"]}
            print(
                f"{art.model_name} batch {b}: torch p50 {rt['p50_ms']:.2f} ms, onnxruntime p50 {ro['p50_ms']:.2f} ms, "
                f"ratio {out['batches'][b]['speedup_p50']:.2f}x",
                flush=True,
            )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path, help="artifact directories from 'toolkit export'")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_latency")
    args = ap.parse_args(argv)
    command = command_line("benchmarks.cpu_latency", argv)
    env = environment()
    res = [bench_artifact(a, args.batches, args.warmup, args.iters) for a in args.artifacts]
    write_json(args.out.with_suffix(".json"), {"command": command, "environment": env, "results": res})
    lines = [
        "# ONNX Runtime fp32 vs PyTorch eager, CPU",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, torch threads {env['torch_threads']}, "
        f"torch {env['versions']['torch']}; random weights; engine-only (input prepared before the clock); "
        f"warm-up {args.warmup}, {args.iters} timed iterations each, measured side by side in one run.",
        "",
        "| model | batch | torch p50 ms | torch p90 | ORT p50 ms | ORT p90 | ORT p99 | ORT img/s | speed-up (p50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        for b, v in r["batches"].items():
            t, o = v["torch"], v["onnxruntime"]
            model = r["model"].replace("|", r"\|")  # a table cell cannot hold a bare '|'
            lines.append(
                f"| {model} | {b} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {o['p50_ms']:.2f} | "
                f"{o['p90_ms']:.2f} | {o['p99_ms']:.2f} | {o['throughput_ips']:.1f} | {v['speedup_p50']:.2f}x |"
            )
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
