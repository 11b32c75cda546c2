"""The embedded-benchmark protocol: train CausalCLIP and the linear probe on one family, test on the rest.

Used by `toolkit demo` and by `benchmarks/embedded_generalisation.py` (which commits the result).
"""

from __future__ import annotations

import time
from pathlib import Path

from toolkit.data.embedded import EmbeddedConfig, build_embedded_benchmark
from toolkit.io import read_json, write_json, write_text


def run_generalisation(
    workdir: str | Path,
    clip: str = "tiny-vit-64",
    pretrained: str | None = None,
    epochs: int = 80,
    methods: tuple[str, ...] = ("causal", "probe"),
    progress: bool = True,
    bench_cfg: EmbeddedConfig | None = None,
) -> dict:
    from toolkit.evaluation import markdown_table
    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.pipelines.detector import console, evaluate_detector, train_detector
    from toolkit.training.detector import TrainConfig

    workdir = Path(workdir)
    t0 = time.perf_counter()
    bench = build_embedded_benchmark(workdir / "data" / "embedded", bench_cfg, progress)
    proto = read_json(bench / "benchmark.json")["protocol"]
    cache = workdir / "cache"
    backbone = load_backbone(BackboneConfig(name=clip, pretrained=pretrained))
    reports, timings = {}, {"build_benchmark_s": time.perf_counter() - t0}
    for m in methods:
        t = time.perf_counter()
        run = workdir / "runs" / m
        train_detector(
            bench / proto["train"], run, val_dir=bench / proto["threshold"],
            train_cfg=TrainConfig(method=m, epochs=epochs), cache_dir=cache, progress=progress, backbone=backbone,
        )  # fmt: skip
        reports[m] = evaluate_detector(
            run, bench / proto["test"], cache_dir=cache, progress=progress, backbone=backbone
        )
        timings[f"{m}_s"] = time.perf_counter() - t
        console.print(f"{m}: mean unseen AUC {100 * (reports[m]['mean_unseen']['auc'] or 0):.1f}")
    md = markdown_table(reports)
    result = {"backbone": backbone.identity, "protocol": proto, "reports": reports, "timings": timings}
    json_path = write_json(workdir / "report.json", result)
    md_path = write_text(workdir / "report.md", md)
    return {**result, "benchmark": str(bench), "markdown": str(md_path), "json": str(json_path), "table": md}
