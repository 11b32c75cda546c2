"""`make mutation`'s report (benchmarks/mutation_report.py) counts from mutmut's result files."""

from __future__ import annotations

import json

from benchmarks.mutation_report import collect, main, rate


def _meta(root, module, codes):
    path = root / f"{module}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_a_mutant_whose_tests_could_not_run_is_alive_not_killed(tmp_path):
    """Bug guarded: exit 255 (the worker's tests raised, e.g. a test id that no longer exists) read as
    mutmut's "timeout" and so as killed: one run reported 100% on a module none of whose mutants was tested."""
    mutants = tmp_path / "mutants"
    codes = {1: 1, 2: 255, 3: -24, 4: 0, 5: 33, 6: None}
    _meta(mutants, "pkg/a.py", {f"pkg.a.x_f__mutmut_{k}": v for k, v in codes.items()})
    per, alive = collect(mutants)
    c = per["pkg/a.py"]
    assert (c["killed"], c["error"], c["timeout"], c["survived"], c["no tests"], c["not run"]) == (1, 1, 1, 1, 1, 1)
    assert rate(c) == 2 / 5  # killed + timed out over the judged, the unrun left out
    assert {n for n, _ in alive["pkg/a.py"]} == {"pkg.a.x_f__mutmut_2", "pkg.a.x_f__mutmut_4", "pkg.a.x_f__mutmut_5"}
    out = tmp_path / "report"
    main(["--mutants", str(mutants), "--out", str(out), "--seconds", "120"])
    md = out.with_suffix(".md").read_text()
    assert "| pkg/a.py | 6 | 1 | 1 | 1 | 1 | 1 | 1 | 40.0% |" in md and "in 2.0 min" in md
    assert "`pkg.a.x_f__mutmut_2` (error)" in md
    assert json.loads(out.with_suffix(".json").read_text())["kill_rate"] == 0.4


def test_a_numbered_reason_covers_only_its_own_mutant():
    """Bug guarded: reasons matched by prefix, so the reason written for `..._mutmut_1` was shown for an unjudged
    `..._mutmut_12`; only a key ending in `__mutmut_` (a whole function) covers several."""
    from benchmarks.mutation_report import REASONS, _reason

    numbered = next(k for k in REASONS if not k.endswith("__mutmut_"))
    assert _reason(numbered, "survived") == REASONS[numbered]
    assert _reason(numbered + "99999", "survived") == "not yet judged"
    whole = next(k for k in REASONS if k.endswith("__mutmut_"))
    assert _reason(whole + "7", "survived") == REASONS[whole]
    assert _reason("pkg.a.x_nowhere__mutmut_1", "no tests") == "no test runs this function"
