"""`make mutation`'s report: per module, mutants generated, killed, survived, timed out (and not run), the overall
kill rate, and one line for every survivor with its diff and the reason it is left (REASONS below: equivalent
mutants, or not worth a test), from mutmut 3's result files in `mutants/`.

  python -m benchmarks.mutation_report [--mutants mutants] [--out benchmarks/results/mutation]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# survivors read and judged: mutant name (or its function, a prefix) -> why it is left without a test
REASONS: dict[str, str] = {}


def _status(code) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def collect(mutants: Path) -> dict[str, Counter]:
    per: dict[str, Counter] = {}
    survivors: dict[str, list[str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        data = json.loads(meta.read_text())
        c = per.setdefault(module, Counter())
        for name, code in data.get("exit_code_by_key", {}).items():
            s = _status(code)
            c[s] += 1
            if s == "survived":
                survivors.setdefault(module, []).append(name)
    return per, survivors


def _diff(name: str, mutants: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True,
                         cwd=mutants.parent)  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return " / ".join(ln.strip() for ln in lines)[:200]


def _reason(name: str) -> str:
    for key, why in REASONS.items():
        if name == key or name.startswith(key):
            return why
    return "not yet judged"


def main(argv: list[str] | None = None) -> None:
    from benchmarks.environment import cpu_line, environment
    from toolkit.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--out", type=Path, default=RESULTS / "mutation")
    args = ap.parse_args(argv)
    per, survivors = collect(args.mutants)
    env = environment()
    lines = ["# Mutation testing (mutmut 3, `make mutation`)", "",
             "Each mutant runs the tests that executed its function (mutmut's stats pass over the test files in "
             "pyproject's [tool.mutmut]). Kill rate = (killed + timed out) / (mutants that ran).", "",
             f"Machine: {cpu_line(env)}.", "",
             "| module | mutants | killed | survived | timed out | not run | kill rate |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    tot = Counter()
    for module, c in per.items():
        ran = c["killed"] + c["survived"] + c["timeout"] + c["suspicious"] + c["segfault"]
        rate = (c["killed"] + c["timeout"]) / ran if ran else float("nan")
        not_run = c["not checked"] + c["no tests"] + c["skipped"]
        lines.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['timeout']} | "
                     f"{not_run} | {100 * rate:.1f}% |")  # fmt: skip
        tot.update(c)
    ran = tot["killed"] + tot["survived"] + tot["timeout"] + tot["suspicious"] + tot["segfault"]
    rate = (tot["killed"] + tot["timeout"]) / ran if ran else float("nan")
    lines.append(f"| **all** | {sum(tot.values())} | {tot['killed']} | {tot['survived']} | {tot['timeout']} | "
                 f"{tot['not checked'] + tot['no tests'] + tot['skipped']} | **{100 * rate:.1f}%** |")  # fmt: skip
    lines += ["", "## Survivors", ""]
    for names in survivors.values():
        for name in names:
            lines.append(f"- `{name}`: `{_diff(name, args.mutants)}` — {_reason(name)}")
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(args.out.with_suffix(".json"), {"per_module": {m: dict(c) for m, c in per.items()},
                                               "survivors": survivors, "environment": env})  # fmt: skip
    print("\n".join(lines[: 12 + len(per)]))


if __name__ == "__main__":
    main()
