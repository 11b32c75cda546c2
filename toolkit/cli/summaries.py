"""What the CLI prints after a flow: export gates, the int8 gate, the bench tables (shared by commands and the demo)."""

from __future__ import annotations

from pathlib import Path

from toolkit.cli.common import out

_SHOWN = (
    "max_abs_logit",
    "min_cosine_feature",
    "decision_agreement",
    "max_abs_pixel",
    "min_psnr_db",
    "auc_drop_points",
)


def export_summary(art) -> str:
    lines = [f"wrote {art.dir}: {', '.join(art.files)} + manifest.json"]
    for precision, g in art.gates.items():
        s = g["stats"]
        shown = ", ".join(f"{k} {v:.4g}" for k, v in s.items() if k in _SHOWN)
        lines.append(f"  {precision} gate {'passed' if g['passed'] else 'FAILED'}: {shown} (n={s['n']})")
    return "\n".join(lines)


def calibration_summary(r: dict) -> str:
    return (
        f"int8 gate passed: AUC {100 * r['int8']['auc']:.2f} vs fp32 {100 * r['fp32']['auc']:.2f} "
        f"(drop {r['auc_drop_points']:+.2f} points, gate <= {r['gate']['max_auc_drop_points']}), "
        f"decision agreement {100 * r['parity']['decision_agreement']:.1f}%, "
        f"min feature cosine {r['parity']['min_cosine_feature']:.4f}; report: {Path(r['artifact']) / 'int8_report.md'}"
    )


def print_report(report: dict, files: list) -> None:
    from benchmarks.report import rich_tables

    for t in rich_tables(report):
        out.print(t)
    for name, t in report["targets"].items():
        if t["status"] != "ok":
            out.print(f"[yellow]{name} not run:[/] {t['reason']}")
    out.print("wrote " + ", ".join(str(f) for f in files))
