"""The embedded-benchmark protocol: train CausalCLIP and the linear probe on one family, test on the rest.

Used by `toolkit demo` and by `benchmarks/embedded_generalisation.py` (which commits the result).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from toolkit.data.embedded import EmbeddedConfig, build_embedded_benchmark
from toolkit.io import read_json, write_json, write_text


def _protocol_run(bench: Path, proto: dict, run: Path, backbone, cache: Path, train_cfg, causal_cfg=None,
                  progress: bool = True):  # fmt: skip
    """The embedded protocol (`proto`, from benchmark.json) for one head: train on its training family,
    threshold on validation, test on the test split (features through the cache); -> (train summary, report)."""
    from toolkit.pipelines.detector import evaluate_detector, train_detector

    res = train_detector(bench / proto["train"], run, val_dir=bench / proto["threshold"], causal_cfg=causal_cfg,
                         train_cfg=train_cfg, cache_dir=cache, progress=progress, backbone=backbone)  # fmt: skip
    return res, evaluate_detector(run, bench / proto["test"], cache, progress=progress, backbone=backbone)


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
    from toolkit.pipelines.detector import console
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
        _, reports[m] = _protocol_run(
            bench, proto, run, backbone, cache, TrainConfig(method=m, epochs=epochs), None, progress
        )
        timings[f"{m}_s"] = time.perf_counter() - t
        console.print(f"{m}: mean unseen AUC {100 * (reports[m]['mean_unseen']['auc'] or 0):.1f}")
    md = markdown_table(reports)
    result = {"backbone": backbone.identity, "protocol": proto, "reports": reports, "timings": timings}
    json_path = write_json(workdir / "report.json", result)
    md_path = write_text(workdir / "report.md", md)
    return {**result, "benchmark": str(bench), "markdown": str(md_path), "json": str(json_path), "table": md}


# Every variant of the multi-seed table: (method, CausalCLIPConfig overrides). The first is the reference
# CausalCLIP configuration; keep-ratio 0.5 is its default, so "keep 0.5" is that row.
VARIANTS: dict[str, tuple[str, dict]] = {
    "causal": ("causal", {}),
    "probe (no mask)": ("probe", {}),
    "prompt (CoOp)": ("prompt", {}),
    "no HSIC (lambda 0)": ("causal", {"hsic_weight": 0.0}),
    "no non-causal term": ("causal", {"noncausal_weight": 0.0}),
    "HSIC, linear kernel": ("causal", {"hsic_kernel": "linear"}),
    "HSIC on a 64-d random projection": ("causal", {"hsic_project": 64}),
    "keep 0.25": ("causal", {"keep_ratio": 0.25}),
    "keep 0.75": ("causal", {"keep_ratio": 0.75}),
}
SEED_METRICS = ("acc", "ap", "auc")


def run_seeds(
    workdir: str | Path,
    clip: str,
    seeds: int = 5,
    variants: dict[str, tuple[str, dict]] | None = None,
    epochs: int = 80,
    pretrained: str | None = None,
    progress: bool = True,
    bench_cfg: EmbeddedConfig | None = None,
    log=print,
) -> dict:
    """Every variant x seed on one fixed benchmark and one fixed backbone (features cached once, so a seed
    costs head training only). The seed moves mask init, Gumbel noise and data order, never the images or
    the encoder. -> per variant and seed: validation (in-family) AUC, test per generator, mean unseen."""
    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.models.causal_clip import CausalCLIPConfig
    from toolkit.progress import progress_bar
    from toolkit.training.detector import TrainConfig

    variants = variants or VARIANTS
    workdir = Path(workdir)
    bench = build_embedded_benchmark(workdir / "data" / "embedded", bench_cfg, progress)
    proto = read_json(bench / "benchmark.json")["protocol"]
    cache = workdir / "cache"
    backbone = load_backbone(BackboneConfig(name=clip, pretrained=pretrained))
    t0 = time.perf_counter()
    # encode once (train, val, test) through the cache, outside the timed head training
    _protocol_run(
        bench, proto, workdir / "runs" / "warm", backbone, cache, TrainConfig(method="probe", epochs=1), None, progress
    )
    encode_s = time.perf_counter() - t0
    results: dict[str, list[dict]] = {}
    with progress_bar("variants x seeds", len(variants) * seeds, progress) as advance:
        for name, (method, overrides) in variants.items():
            results[name] = []
            for seed in range(seeds):
                run = workdir / "runs" / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-s{seed}"
                tc = TrainConfig(method=method, epochs=epochs, seed=seed)
                res, rep = _protocol_run(
                    bench, proto, run, backbone, cache, tc, CausalCLIPConfig(**overrides), progress=False
                )
                results[name].append({
                    "seed": seed,
                    "val_auc": res["val"]["auc"],
                    "mean_unseen": rep["mean_unseen"],
                    "generators": {g: {m: r[m] for m in ("acc_real", "acc_fake", *SEED_METRICS)}
                                   for g, r in rep["generators"].items()},
                    "seen": sorted(g for g, r in rep["generators"].items() if r["seen_in_training"]),
                    "keep_fraction": res.get("mask_keep_fraction"),
                })  # fmt: skip
                advance()
            mu = np.mean([r["mean_unseen"]["acc"] for r in results[name]])
            log(f"{name}: mean unseen acc {100 * mu:.1f} over {seeds} seeds")
    return {"backbone": backbone.identity, "protocol": proto, "seeds": seeds, "epochs": epochs,
            "variants": {k: {"method": m, "overrides": o} for k, (m, o) in variants.items()},
            "results": results, "encode_s": encode_s}  # fmt: skip


def seed_statistics(res: dict, reference: str = "probe (no mask)") -> dict:
    """mean and std over seeds per variant (mean unseen + per generator), and a paired t-test of each
    variant against `reference` over seeds (same seed = same data order and head init)."""
    from scipy.stats import ttest_rel

    out: dict[str, dict] = {}
    ref = res["results"][reference]
    for name, runs in res["results"].items():
        row: dict = {"mean_unseen": {}, "generators": {}, "val_auc": _ms([r["val_auc"] for r in runs])}
        for m in SEED_METRICS:
            row["mean_unseen"][m] = _ms([r["mean_unseen"][m] for r in runs])
        for g in runs[0]["generators"]:
            row["generators"][g] = {m: _ms([r["generators"][g][m] for r in runs]) for m in SEED_METRICS}
        if name != reference:
            row["vs_reference"] = {}
            for m in SEED_METRICS:
                a = np.array([r["mean_unseen"][m] for r in runs])
                b = np.array([r["mean_unseen"][m] for r in ref])
                p = float(ttest_rel(a, b).pvalue) if len(a) > 1 and np.any(a != b) else 1.0
                row["vs_reference"][m] = {"delta": float((a - b).mean()), "p": p}
        out[name] = row
    return out


def _ms(v: list[float | None]) -> dict:
    a = np.array([x for x in v if x is not None], dtype=np.float64)
    return {"mean": float(a.mean()) if len(a) else None, "std": float(a.std(ddof=1)) if len(a) > 1 else None}


def victim_sweep(
    workdir: str | Path,
    candidates: list[str],
    target_auc: float = 0.75,
    epochs: int = 80,
    progress: bool = True,
    bench_cfg: EmbeddedConfig | None = None,
    log=print,
) -> dict:
    """The linear probe (seed 0) on each candidate backbone, cheapest first: in-family test AUC (the training
    generator's test images) and the mean over unseen generators; -> the first that reaches `target_auc`."""
    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.training.detector import TrainConfig

    workdir = Path(workdir)
    bench = build_embedded_benchmark(workdir / "data" / "embedded", bench_cfg, progress)
    proto = read_json(bench / "benchmark.json")["protocol"]
    rows, chosen = [], None
    for clip in candidates:
        backbone = load_backbone(BackboneConfig(name=clip))
        t = time.perf_counter()
        run = workdir / "runs" / f"victim-{clip}"
        tc = TrainConfig(method="probe", epochs=epochs)
        _, rep = _protocol_run(bench, proto, run, backbone, workdir / "cache", tc, None, progress)
        seen = [g for g, r in rep["generators"].items() if r["seen_in_training"]]
        row = {"clip": clip, "identity": backbone.identity, "image_size": backbone.preprocess_cfg.size,
               "feature_dim": backbone.feature_dim, "in_family_auc": rep["generators"][seen[0]]["auc"],
               "unseen_auc": rep["mean_unseen"]["auc"], "encode_and_train_s": time.perf_counter() - t}  # fmt: skip
        rows.append(row)
        log(f"{clip}: probe in-family AUC {100 * row['in_family_auc']:.1f}, unseen {100 * row['unseen_auc']:.1f}")
        if row["in_family_auc"] >= target_auc:  # cheapest first: the rest cost more and are not needed
            chosen = clip
            break
    return {"candidates": rows, "target_auc": target_auc, "chosen": chosen}
