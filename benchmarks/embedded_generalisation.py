"""CausalCLIP against the UnivFD linear probe on the embedded benchmark's unseen generators.

Run:  .venv/bin/python -m benchmarks.embedded_generalisation [--clip tiny-vit-64] [--workdir demo_out]
Writes benchmarks/results/embedded_generalisation.{md,json} with the machine, versions and command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.pipelines.generalisation import run_generalisation

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="tiny-vit-64")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--workdir", type=Path, default=Path("demo_out"))
    ap.add_argument("--out", type=Path, default=RESULTS / "embedded_generalisation")
    args = ap.parse_args(argv)
    res = run_generalisation(args.workdir, clip=args.clip, pretrained=args.pretrained, epochs=args.epochs)
    command = command_line("benchmarks.embedded_generalisation", argv)
    env = environment()
    t = res["timings"]
    md = (
        "# Embedded benchmark: CausalCLIP vs linear probe\n\n"
        f"Command: `{command}`  \n"
        f"Backbone: `{res['backbone']}`  \n"
        f"Protocol: train on `{res['protocol']['train']}`, threshold fixed on `{res['protocol']['threshold']}`, "
        f"test on `{res['protocol']['test']}` (unseen: {', '.join(res['protocol']['unseen'])})  \n"
        f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}, "
        f"open_clip {env['versions']['open_clip_torch']}, diffusers {env['versions']['diffusers']}  \n"
        f"Wall time: benchmark build {t['build_benchmark_s']:.0f} s, "
        + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in t.items() if k != "build_benchmark_s")
        + "\n\nAll numbers in %.\n\n"
        + res["table"]
    )
    write_result(args.out, {"command": command, "environment": env, **res}, md)


if __name__ == "__main__":
    main()
