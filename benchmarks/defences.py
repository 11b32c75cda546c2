"""One defence table: probe, causal and prompt heads, each alone and behind the one-step purifier student,
clean, under PGD at eps 2, 4, 8 /255 (on the head's decision) and under JPEG 75, with ms per image.

Run:  .venv/bin/python -m benchmarks.defences --head causal=RUN --head probe=RUN --head prompt=RUN \\
          --purifier PURIFIER_RUN --images data/embedded/test [--n 128] [--eps 2 4 8]
Writes benchmarks/results/defences.{md,json} with the machine fingerprint and the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result
from toolkit.pipelines.defences import head_defence_markdown, head_defence_table

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", action="append", required=True, help="LABEL=DETECTOR_RUN")
    ap.add_argument("--purifier", type=Path, required=True, help="purifier run (toolkit train purifier)")
    ap.add_argument("--images", type=Path, required=True, help="held-out labelled folder")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--eps", type=float, nargs="+", default=[2, 4, 8])
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "defences")
    args = ap.parse_args(argv)
    heads = dict(h.split("=", 1) for h in args.head)
    r = head_defence_table(heads, args.purifier, args.images, tuple(args.eps), steps=args.pgd_steps, n=args.n)
    command = command_line("benchmarks.defences", argv)
    env = environment()
    md = (
        "# Defences: detector heads alone and behind the purifier student\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {cpu_line(env)}, torch {env['versions']['torch']}  \n"
        f"{r['n']} held-out images of `{r['images']}`; PGD ({r['pgd_steps']} steps, random start) on each head's own "
        "decision, without the purifier in the loop (the attacker does not know the defence; the purifier table "
        "reports the adaptive attack through the student). All numbers are accuracy in %.\n\n"
        + head_defence_markdown(r)
    )
    write_result(args.out, {"command": command, "environment": env, **r}, md)


if __name__ == "__main__":
    main()
