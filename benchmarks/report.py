"""Report outputs: bench's JSON, Markdown, PNG plots and rich tables; the write-out every benchmark script shares.

The Markdown and the plots are rendered from the JSON's numbers only, so they cannot disagree with it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from benchmarks.environment import cpu_line
from toolkit.io import atomic_path, write_json, write_text


def command_line(module: str, argv: list[str] | None = None) -> str:
    """How a benchmark script was run, as its report records it: `python -m benchmarks.<name> ARGS`."""
    return (f"python -m {module} " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()


def write_result(out_stem: Path, record: dict, md: str) -> None:
    """A benchmark script's outputs: <out>.json (everything), <out>.md (the tables); the Markdown is printed."""
    write_json(Path(out_stem).with_suffix(".json"), record)
    write_text(Path(out_stem).with_suffix(".md"), md)
    print(md)


FILES = ("bench.json", "bench.md", "latency.png", "throughput.png", "parity.png")


def _ok(report: dict) -> dict[str, dict]:
    return {n: t for n, t in report["targets"].items() if t["status"] == "ok"}


def latency_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, t in _ok(report).items():
        for b, lat in t["latency"].items():
            e2e = t.get("e2e", {}).get(b)
            rows.append(
                [
                    name,
                    b,
                    f"{lat['p50_ms']:.3f}",
                    f"{lat['p90_ms']:.3f}",
                    f"{lat['p99_ms']:.3f}",
                    f"{lat['throughput_ips']:.1f}",
                    f"{lat.get('speedup_vs_reference_p50', float('nan')):.2f}x",
                    f"{e2e['throughput_ips']:.1f}" if e2e else "-",
                    f"{100 * e2e['fraction_of_engine_only']:.0f}%" if e2e else "-",
                ]
            )
    return rows


LATENCY_HEAD = ["target", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "vs ref (p50)", "e2e img/s", "e2e/engine"]
ACCURACY_HEAD = ["AUC", "ΔAUC", "ΔAP", "Δacc"]


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.2f}"


def parity_head(report: dict) -> list[str]:
    head = ["target"] + [title for _, title in report["parity_columns"]]
    return head + (ACCURACY_HEAD if report.get("detects") else [])


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if key == "decision_agreement" else f"{v:.6g}"


def parity_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, t in _ok(report).items():
        p, acc, d = t.get("parity"), t.get("accuracy") or {}, t.get("accuracy_delta") or {}
        if p is None:
            continue
        row = [name] + [_cell(k, p.get(k)) for k, _ in report["parity_columns"]]
        if report.get("detects"):
            row += [
                "-" if acc.get("auc") is None else f"{100 * acc['auc']:.2f}",
                _pts(d.get("auc")),
                _pts(d.get("ap")),
                _pts(d.get("acc")),
            ]
        rows.append(row)
    return rows


def markdown(report: dict, command: str | None = None) -> str:
    env = report["environment"]
    gpu = env["gpu"]["name"] if env.get("gpu") else "none"
    lines = [f"# Bench: {report['model']} ({report['artifact']})", ""]
    if command:
        lines += [f"Command: `{command}`  "]
    lines += [
        f"Machine: {cpu_line(env)}, GPU {gpu}, torch threads {env['torch_threads']}, "
        f"torch {env['versions'].get('torch')}, onnxruntime {env['versions'].get('onnxruntime')}, "
        f"tensorrt {env['versions'].get('tensorrt')}.  ",
        f"Latency: engine-only, warm-up {report['config']['warmup']}, "
        + (
            f"{report['config']['duration_s']} s per point"
            if report["config"]["duration_s"]
            else f"{report['config']['iterations']} iterations per point"
        )
        + "; host/device copies "
        + (
            f"included for {', '.join(report['copies_included'])} (numpy in, numpy out)."
            if report["copies_included"]
            else "do not exist (every engine here ran on the CPU)."
        )
        + "  ",
        f"Parity: against {report['reference']} on {report['parity_inputs']}.",
        "",
        "## Latency",
        "",
        _md_table(LATENCY_HEAD, latency_rows(report)),
        "",
        "## Parity",
        "",
        _md_table(parity_head(report), parity_rows(report)),
    ]
    if report.get("auto"):
        lines += ["", "## --engine auto", ""]
        lines += [f"- batch {b}: {a['engine']}/{a['precision']} ({a['why']})" for b, a in report["auto"].items()]
    skipped = {n: t for n, t in report["targets"].items() if t["status"] != "ok"}
    if skipped:
        lines += ["", "## Not run here", ""] + [f"- {n}: {t['reason']}" for n, t in skipped.items()]
    return "\n".join(lines) + "\n"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", r"\|") for c in r] for r in [head, *rows]]
    return "\n".join(
        ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in esc[1:]]
    )


def plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(report)
    written = []
    for fname, key, ylabel, logy in (
        ("latency.png", "p50_ms", "p50 latency (ms)", True),
        ("throughput.png", "throughput_ips", "throughput (images/s)", False),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, t in ok.items():
            bs = sorted(int(b) for b in t["latency"])
            ax.plot(bs, [t["latency"][str(b)][key] for b in bs], marker="o", label=name)
            if key == "throughput_ips" and "e2e" in t:
                ax.plot(
                    bs,
                    [t["e2e"][str(b)]["throughput_ips"] for b in bs],
                    marker="x",
                    linestyle="--",
                    label=f"{name} end-to-end",
                )
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{report['model']}: {ylabel}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / fname))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    names = [n for n, t in ok.items() if t.get("parity")]
    for a, (key, title) in zip(axes, report["parity_columns"][:1] + report["parity_columns"][-1:], strict=True):
        vals = [ok[n]["parity"].get(key) or 0.0 for n in names]
        if key == "decision_agreement":
            a.bar(names, [100 * v for v in vals])
            a.set_ylim(90, 100.5)
            a.set_ylabel(f"decision agreement with {report['reference']} (%)")
        else:
            a.bar(names, [max(abs(v), 1e-12) for v in vals])
            a.set_yscale("log")
            a.set_ylabel(f"{title} vs {report['reference']} (floor 1e-12)")
        a.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"{report['model']}: parity against {report['reference']}")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "parity.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_reports(report: dict, out_dir: str | Path, command: str | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**report, "command": command}
    files = [write_json(out_dir / "bench.json", report), write_text(out_dir / "bench.md", markdown(report, command))]
    return files + plots(report, out_dir)


def rich_tables(report: dict) -> list:
    from rich.table import Table

    out = []
    for title, head, rows in (
        ("latency", LATENCY_HEAD, latency_rows(report)),
        (f"parity vs {report['reference']}", parity_head(report), parity_rows(report)),
    ):
        t = Table(title=f"{report['model']}: {title}")
        for h in head:
            t.add_column(h, justify="left" if h == "target" else "right")
        for r in rows:
            t.add_row(*r)
        out.append(t)
    return out
