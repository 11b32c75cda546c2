"""`make mutation`'s report: per module, mutants generated, killed, timed out, survived and not covered by any
test, the kill rate, and one line for every mutant left alive with its diff and the reason it is left (REASONS
below: equivalent mutants, or not worth a test), from mutmut 3's result files in `mutants/`.

Kill rate = (killed + timed out) / every mutant that was judged, where a mutant no test runs ("no tests") counts as
alive: a function no test executes is not tested. Mutants mutmut did not get to (a run stopped early) are listed
under "not run" and left out of the rate.

  python -m benchmarks.mutation_report [--mutants mutants] [--out benchmarks/results/mutation] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ALIVE = ("survived", "no tests", "suspicious", "segfault")
KILLED = ("killed", "timeout")

# Mutants read and judged, left without a test: mutant name (or a prefix: its function) -> why.
REASONS: dict[str, str] = {}


def _status(code) -> str:
    from mutmut.stats import status_by_exit_code

    return "not run" if code is None else status_by_exit_code[code]


def collect(mutants: Path) -> tuple[dict[str, Counter], dict[str, list[tuple[str, str]]]]:
    """-> (module -> Counter of statuses, module -> [(mutant, status)] of those left alive)."""
    per: dict[str, Counter] = {}
    alive: dict[str, list[tuple[str, str]]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        data = json.loads(meta.read_text())
        c = per.setdefault(module, Counter())
        for name, code in data.get("exit_code_by_key", {}).items():
            s = _status(code)
            c[s] += 1
            if s in ALIVE:
                alive.setdefault(module, []).append((name, s))
    return per, alive


def _diff(name: str, module: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        text = get_diff_for_mutant(name, path=module)
    except Exception as e:  # a report line, never a crash of the report
        return f"(diff unavailable: {type(e).__name__})"
    lines = [ln for ln in text.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return " / ".join(ln.strip() for ln in lines)[:220].replace("`", "'")


def _reason(name: str, status: str) -> str:
    for key, why in REASONS.items():
        if name == key or name.startswith(key):
            return why
    return "no test runs this function" if status == "no tests" else "not yet judged"


def rate(c: Counter) -> float:
    judged = sum(c[s] for s in KILLED + ALIVE)
    return sum(c[s] for s in KILLED) / judged if judged else float("nan")


def main(argv: list[str] | None = None) -> None:
    from benchmarks.environment import cpu_line, environment
    from toolkit.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--out", type=Path, default=RESULTS / "mutation")
    ap.add_argument("--seconds", type=float, default=None, help="wall time of the mutmut run, for the report")
    ap.add_argument("--command", default="make mutation")
    args = ap.parse_args(argv)
    per, alive = collect(args.mutants)
    env = environment()
    took = f" in {args.seconds / 60:.1f} min" if args.seconds else ""
    lines = ["# Mutation testing (mutmut 3, `make mutation`)", "",
             f"Command: `{args.command}`{took}.  ",
             f"Machine: {cpu_line(env)}.", "",
             "Each mutant runs the tests that executed its function (mutmut's stats pass over the test files in "
             "pyproject's [tool.mutmut]). Kill rate = (killed + timed out) / judged, where a mutant that no test runs "
             "counts as alive.", "",
             "| module | mutants | killed | timed out | survived | no tests | not run | kill rate |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    tot = Counter()
    for module, c in per.items():
        lines.append(f"| {module} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no tests']} | {c['not run']} | {100 * rate(c):.1f}% |")  # fmt: skip
        tot.update(c)
    lines.append(f"| **all** | {sum(tot.values())} | {tot['killed']} | {tot['timeout']} | {tot['survived']} | "
                 f"{tot['no tests']} | {tot['not run']} | **{100 * rate(tot):.1f}%** |")  # fmt: skip
    n_alive = sum(len(v) for v in alive.values())
    lines += ["", f"## Mutants left alive ({n_alive})", ""]
    for module, names in alive.items():
        for name, status in names:
            lines.append(f"- `{name}` ({status}): `{_diff(name, module)}` — {_reason(name, status)}")
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(args.out.with_suffix(".json"), {
        "command": args.command, "seconds": args.seconds, "per_module": {m: dict(c) for m, c in per.items()},
        "kill_rate": rate(tot), "alive": {m: [{"mutant": n, "status": s, "reason": _reason(n, s)} for n, s in v]
                                          for m, v in alive.items()}, "environment": env})  # fmt: skip
    print("\n".join(lines[: 11 + len(per)]))


if __name__ == "__main__":
    main()
