"""Bytes hashed by one `toolkit export --precision fp32 --precision fp16 --precision int8 --precision bf16`, against
the artifact's size: an artifact is verified once per command, and each later stage hashes only what it adds.

  python -m benchmarks.artifact_hashing --clip ViT-B-16 --work /tmp/hashing
Builds (once) a run on toy images with the given backbone, exports it with every precision, and counts the bytes
passed through sha256 (toolkit.io.HASHED; on a toolkit without that counter, by wrapping toolkit.io.sha256_file,
which is how the figure before the change was taken). Writes benchmarks/results/artifact_hashing.{json,md}
(--label names the row; rows of other labels already there are kept).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _counter():
    """-> a function returning the bytes hashed so far in this process (installed before the toolkit is imported)."""
    import toolkit.io as tio

    if hasattr(tio, "HASHED"):
        return lambda: tio.HASHED["bytes"]
    seen = {"bytes": 0}
    real = tio.sha256_file

    def counted(path, *a, **k):
        seen["bytes"] += Path(path).stat().st_size
        return real(path, *a, **k)

    tio.sha256_file = counted
    return lambda: seen["bytes"]


def _toy(root: Path, n: int, seed: int, size: int = 224) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for label, sub in ((0, "0_real"), (1, "1_fake")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.stack([yy * rng.uniform(60, 200), xx * rng.uniform(60, 200), (xx + yy) * 50], -1)
            img += rng.normal(0, 4, img.shape) + label * ((np.indices((size, size)).sum(0) // 2) % 2)[..., None] * 90
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / sub / f"{i:03d}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--work", type=Path, default=Path("/tmp/artifact_hashing"))
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--out", type=Path, default=RESULTS / "artifact_hashing")
    args = ap.parse_args(argv)
    hashed = _counter()
    from benchmarks.environment import cpu_line, environment
    from benchmarks.report import command_line
    from toolkit.cli.workflows import ExportOptions, export_all
    from toolkit.io import write_json, write_text
    from toolkit.models.backbone import BackboneConfig
    from toolkit.pipelines.detector import train_detector
    from toolkit.training.detector import TrainConfig

    work = args.work
    run = work / "run"
    if not (run / "config.json").is_file():
        train_detector(_toy(work / "train", 16, 0), run, backbone_cfg=BackboneConfig(name=args.clip),
                       train_cfg=TrainConfig(epochs=5), cache_dir=None, progress=False)  # fmt: skip
    calib = work / "calib" if (work / "calib").is_dir() else _toy(work / "calib", 8, 1)
    evals = work / "eval" if (work / "eval").is_dir() else _toy(work / "eval", 8, 2)
    out = work / f"artifact-{args.label.replace(' ', '_')}"
    opts = ExportOptions(precisions=("fp32", "fp16", "int8", "bf16"), calib_images=calib, eval_images=evals)
    before, t = hashed(), time.perf_counter()
    art = export_all(run, out, opts, log=lambda *_: None)
    wall, n = time.perf_counter() - t, hashed() - before
    size = sum((art.dir / f).stat().st_size for f in art.files)
    row = {"label": args.label, "artifact_bytes": size, "hashed_bytes": n, "ratio": n / size, "wall_s": wall,
           "files": sorted(art.files)}  # fmt: skip
    path = args.out.with_suffix(".json")
    record = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    record["rows"] = [r for r in record["rows"] if r["label"] != args.label] + [row]
    record.update(command=command_line("benchmarks.artifact_hashing", argv), environment=environment(),
                  clip=args.clip)  # fmt: skip
    write_json(path, record)
    lines = ["# Bytes hashed by one export with every precision", "",
             f"`toolkit export --precision fp32 --precision fp16 --precision int8 --precision bf16` of a {args.clip} "
             "run (random weights, toy images), through `toolkit.cli.workflows.export_all` as the CLI calls it.", "",
             f"Command: `{record['command']}`  ", f"Machine: {cpu_line(record['environment'])}.", "",
             "| tree | artifact (MB) | hashed (MB) | hashed / artifact | wall s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in record["rows"]:
        lines.append(f"| {r['label']} | {r['artifact_bytes'] / 1e6:.1f} | {r['hashed_bytes'] / 1e6:.1f} | "
                     f"{r['ratio']:.2f}x | {r['wall_s']:.0f} |")  # fmt: skip
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
