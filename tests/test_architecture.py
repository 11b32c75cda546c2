"""docs/DESIGN.md: the import direction: export/, calibration/, benchmarks/ import toolkit core, never each other;
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


def _module_imports() -> dict[str, set[str]]:
    """toolkit module -> the toolkit modules it imports anywhere in its body (lazy imports inside functions too:
    a cycle through a function-level import is still a design cycle)."""
    mods = {}
    for f in (ROOT / "toolkit").rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = f
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def test_no_import_cycles_in_the_core():
    graph = _module_imports()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_core_does_not_import_up_into_flows():
    """The core (artifact, kinds, engines, prediction path, data, models, ...) never imports the flows built on
    it (pipelines, training) or the CLI; training never imports pipelines."""
    up = ("toolkit.pipelines", "toolkit.training", "toolkit.cli")
    for name, deps in _module_imports().items():
        if name.startswith(up) or name == "toolkit":
            continue
        bad = {d for d in deps if d.startswith(up)}
        assert not bad, f"{name} imports {bad}"
    for name, deps in _module_imports().items():
        if name.startswith("toolkit.training"):
            assert not {d for d in deps if d.startswith("toolkit.pipelines")}, name


def test_no_file_points_a_reader_outside_the_repository():
    """A user who clones the project has no ../shared: README, docs and docstrings cite only files inside it."""
    import re

    pattern = re.compile(r"\.\./shared|(?<![\w/])(?:GPU|STYLE|KINDS|DEVELOPERS)\.md|(?<![\w/])DESIGN\.md")
    bad = []
    for f in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *(ROOT / p for p in ("Makefile", "pyproject.toml"))]:
        bad += [f"{f.name}: {m.group(0)}" for m in pattern.finditer(f.read_text())]
    for pkg in ("toolkit", "export", "calibration", "benchmarks", "tests"):
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name == "test_architecture.py":
                continue
            bad += [f"{f.relative_to(ROOT)}: {m.group(0)}" for m in pattern.finditer(f.read_text())]
    assert not bad, bad
