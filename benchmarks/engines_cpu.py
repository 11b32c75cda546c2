"""Every CPU engine side by side in one run, then `--engine auto` against the fastest (engines issue).

Per artifact and batch: torch eager and torch.compile (fp32 reference module), onnxruntime and OpenVINO on
every precision file the artifact holds (OpenVINO in f32, never its silent bf16), and OpenVINO running the
fp32 graph in bf16 where the CPU has it (reported, not chosen: bf16 has no gate in the manifest yet).
The gated rows become this machine's tuning record (as `toolkit bench --tune` writes it); then the engine
`--engine auto` resolves to is opened afresh and timed again, and compared with the fastest of torch eager,
torch.compile, onnxruntime and OpenVINO measured in the same run (target: at least 0.95x).

  .venv/bin/python -m benchmarks.engines_cpu ARTIFACT [ARTIFACT ...] [--batches 1 8] [--min-seconds 3]
Writes benchmarks/results/engines_cpu.{md,json} with the machine's CPU flags and the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.environment import cpu_line, environment
from benchmarks.harness import time_engine
from benchmarks.report import command_line, write_result

RESULTS = Path(__file__).parent / "results"


def _engines(art):
    """(name, engine kind, precision, opener) for every CPU engine x precision; openers return an Engine."""
    from toolkit.engines import available_kinds, open_engine, reference_engine
    from toolkit.engines.torch_engine import TorchEngine

    def compiled():
        import torch

        ref = reference_engine(art)
        return TorchEngine(torch.compile(ref.module), ref.inputs, ref.outputs)

    out = [("torch eager", "torch", "fp32", lambda: reference_engine(art)), ("torch.compile", None, "fp32", compiled)]
    files = [p for p, v in art.precisions.items() if not v.get("execution")]  # bf16: an execution of fp32
    for p in files:
        out.append((f"onnxruntime {p}", "onnxruntime", p, lambda p=p: open_engine(art, "onnxruntime", p)))
    if "openvino" in available_kinds():
        from toolkit.engines.openvino_engine import OpenVinoEngine, bf16_unavailable_reason

        for p in files:
            out.append((f"openvino {p} (f32 exec)", "openvino", p, lambda p=p: open_engine(art, "openvino", p)))
        if "bf16" in art.precisions:  # gated: a choice auto can make
            out.append(("openvino bf16 (gated)", "openvino", "bf16", lambda: open_engine(art, "openvino", "bf16")))
        elif bf16_unavailable_reason() is None:  # measured, but not a choice until its gate has passed
            bf16 = lambda: OpenVinoEngine(art.onnx_path("fp32"), "bf16")  # noqa: E731
            out.append(("openvino bf16 exec of fp32 (no gate)", None, "bf16", bf16))
    return out


def bench_artifact(
    artifact: Path, batches: list[int], warmup: int, iters: int, min_seconds: float, rounds: int = 3, log=print
) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.engines import open_engine
    from toolkit.tuning import measured_from_targets, resolve, write_record

    art = Artifact.open(artifact)
    s = art.preprocess["size"]
    feeds = {b: {"images": np.random.default_rng(b).standard_normal((b, 3, s, s)).astype(np.float32)} for b in batches}
    rows, targets = {}, {}
    engines = _engines(art)
    for name, kind, precision, opener in engines:
        log(f"{art.model_name}: {name} ...")
        with opener() as eng:
            lat = {str(b): time_engine(eng, feeds[b], warmup, iters, min_seconds, iters) for b in batches}
        rows[name] = lat
        if kind is not None:  # a choice --engine auto can make
            targets[name] = {"engine": kind, "precision": precision, "status": "ok", "latency": lat}
    record = write_record(art, measured_from_targets(art, targets), "python -m benchmarks.engines_cpu")
    auto = {}
    openers = {name: opener for name, _, _, opener in engines}
    for b in batches:
        (engine, precision, _), why = resolve(art, b)
        base = {n: r[str(b)] for n, r in rows.items() if not n.endswith("(no gate)")}
        best = max(base, key=lambda n: base[n]["throughput_ips"])
        # auto against the fastest, in interleaved rounds, each engine opened afresh: two timings of one engine
        # minutes apart differ by a few percent on this VM, as much as the margin asked for
        ratios, auto_lat, best_lat = [], [], []
        for _ in range(rounds):
            with openers[best]() as eng:
                best_lat.append(time_engine(eng, feeds[b], warmup, iters, min_seconds, iters))
            with open_engine(art, engine, precision) as eng:
                auto_lat.append(time_engine(eng, feeds[b], warmup, iters, min_seconds, iters))
            ratios.append(auto_lat[-1]["throughput_ips"] / best_lat[-1]["throughput_ips"])
        mid = int(np.argsort(ratios)[len(ratios) // 2])
        auto[str(b)] = {
            "choice": f"{engine}/{precision}",
            "why": why,
            **auto_lat[mid],
            "fastest": best,
            "fastest_throughput_ips": best_lat[mid]["throughput_ips"],
            "ratio_to_fastest": float(np.median(ratios)),
            "ratios": ratios,
        }
    return {"model": art.model_name, "artifact": str(artifact), "rows": rows, "auto": auto, "record": str(record)}


def markdown(res: list[dict], env: dict, command: str, batches: list[int]) -> str:
    lines = [
        "# CPU engines side by side, and `--engine auto`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, onnxruntime {env['versions'].get('onnxruntime')}, "
        f"openvino {env['versions'].get('openvino')}, torch {env['versions'].get('torch')} "
        f"({env['torch_threads']} threads).",
        "",
        "p50 latency in ms (images/s in brackets); one process, engines one after another, each on all cores.",
    ]
    for r in res:
        head = ["engine"] + [f"batch {b}" for b in batches]
        lines += ["", f"## {r['model']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, lat in r["rows"].items():
            cells = [f"{lat[str(b)]['p50_ms']:.2f} ({lat[str(b)]['throughput_ips']:.1f})" for b in batches]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = [f"**{r['auto'][str(b)]['p50_ms']:.2f} ({r['auto'][str(b)]['throughput_ips']:.1f})** = "
                 f"{r['auto'][str(b)]['choice']}" for b in batches]  # fmt: skip
        lines.append("| **auto** | " + " | ".join(cells) + " |")
        lines.append("")
        for b in batches:
            a = r["auto"][str(b)]
            lines.append(
                f"- batch {b}: auto = {a['choice']} ({a['why']}): **{a['ratio_to_fastest']:.2f}x** the fastest "
                f"of the table ({a['fastest']}), median of {len(a['ratios'])} interleaved rounds "
                f"({', '.join(f'{x:.2f}' for x in a['ratios'])}); ungated bf16 is not a candidate"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="at least this many timed calls per point")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="and at least this long")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of auto against the fastest")
    ap.add_argument("--out", type=Path, default=RESULTS / "engines_cpu")
    args = ap.parse_args(argv)
    command = command_line("benchmarks.engines_cpu", argv)
    env = environment()
    res = [
        bench_artifact(a, args.batches, args.warmup, args.iters, args.min_seconds, args.rounds) for a in args.artifacts
    ]
    md = markdown(res, env, command, args.batches)
    write_result(args.out, {"command": command, "environment": env, "results": res}, md)


if __name__ == "__main__":
    main()
