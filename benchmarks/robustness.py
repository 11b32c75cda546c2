"""Robustness matrix: detectors under JPEG, blur and downscaling (UnivFD's protocol), one table and one plot.

Run:  .venv/bin/python -m benchmarks.robustness --target causal=RUN_OR_ARTIFACT --target probe=RUN \\
          [--target causal-int8=ARTIFACT:onnxruntime:int8] --data data/embedded/test \\
          [--perturb jpeg:100,90,80,70,60,50,40,30 --perturb blur:0,1,2,3,4 --perturb resize:0.5,0.25]
Each target is a run (scored by PyTorch) or an artifact (scored by ENGINE:PRECISION, default onnxruntime fp32),
through the same code as `toolkit eval --perturb`. Writes benchmarks/results/robustness.{md,json,png} with the
machine fingerprint and the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.perturb import parse_axes
from toolkit.pipelines.robustness import markdown_matrix, plot_matrix, robustness_matrix
from toolkit.predict import EngineChoice

RESULTS = Path(__file__).parent / "results"
AXES = ["jpeg:100,90,80,70,60,50,40,30", "blur:0,1,2,3,4", "resize:0.5,0.25"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True, help="LABEL=PATH[:ENGINE:PRECISION]")
    ap.add_argument("--data", type=Path, required=True, help="labelled test folder")
    ap.add_argument("--perturb", action="append", default=None, help=f"axes (default: {' '.join(AXES)})")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "robustness")
    args = ap.parse_args(argv)
    axes = parse_axes(args.perturb or AXES)
    reports = {}
    for spec in args.target:
        label, _, rest = spec.partition("=")
        path, engine, precision = [*rest.split(":"), "onnxruntime", "fp32"][:3]
        print(f"{label}: {path} ...", flush=True)
        rep = robustness_matrix(path, args.data, axes, EngineChoice(engine, precision), workers=args.workers)
        reports[f"{label} ({rep['scored_by']})"] = rep
    command = command_line("benchmarks.robustness", argv)
    env = environment()
    first = next(iter(reports.values()))
    md = (
        "# Robustness: JPEG, Gaussian blur and downscaling\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {cpu_line(env)}  \n"
        f"Data: `{args.data}`; training generators {first['train_generators']}; `unseen` columns average the "
        "others. Blur is applied before JPEG in a chain (UnivFD); each axis here varies one operation.\n\n"
        + markdown_matrix(reports)
        + f"\n![robustness]({args.out.name}.png)\n"
    )
    write_result(args.out, {"command": command, "environment": env, "reports": reports}, md)
    plot_matrix(reports, args.out.with_name(args.out.name + ".png"))


if __name__ == "__main__":
    main()
