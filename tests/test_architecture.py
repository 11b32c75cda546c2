"""DESIGN.md's import direction: export/, calibration/, benchmarks/ import toolkit core, never each other;
the core never imports them (only toolkit/cli wires them together); heavy runtimes load lazily."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDE = ("export", "calibration", "benchmarks")


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def test_side_packages_do_not_import_each_other():
    for pkg in SIDE:
        for f in (ROOT / pkg).rglob("*.py"):
            bad = _imports(f) & (set(SIDE) - {pkg})
            assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_core_does_not_import_side_packages():
    for f in (ROOT / "toolkit").rglob("*.py"):
        if "cli" in f.relative_to(ROOT).parts:
            continue
        bad = _imports(f) & set(SIDE)
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_help_does_not_load_heavy_runtimes():
    heavy = "('torch', 'open_clip', 'onnxruntime', 'tensorrt', 'diffusers')"
    code = f"import sys; from toolkit.cli import app; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
