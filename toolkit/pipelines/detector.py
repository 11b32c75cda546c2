"""Detector flows: folder -> cached features -> trained head + threshold -> run dir; run + folder -> report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from toolkit.data.features import default_cache_dir, extract_features
from toolkit.data.folders import LabelledImages, describe, find_labelled_images
from toolkit.data.images import Skipped
from toolkit.models.backbone import BackboneConfig, ClipBackbone, load_backbone
from toolkit.models.causal_clip import CausalCLIPConfig
from toolkit.row_log import write_skipped_csv
from toolkit.training.detector import TrainConfig, choose_threshold, predict_logits, train_head

console = Console(stderr=True)


@dataclass
class EncodedSet:
    features: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,)
    generators: list[str]
    paths: list[Path]
    skipped: list[Skipped] = field(default_factory=list)


def encode(
    ds: LabelledImages,
    backbone: ClipBackbone,
    cache_dir: Path | None,
    batch_size: int = 64,
    progress: bool = True,
    description: str = "encode",
) -> EncodedSet:
    fs = extract_features(ds.paths, backbone, batch_size, cache_dir, progress, description)
    if fs.skipped:
        console.print(
            f"[yellow]{description}: skipped {len(fs.skipped)} unreadable image(s), e.g. "
            f"{fs.skipped[0].path}: {fs.skipped[0].reason}"
        )
    if not fs.index:
        raise ValueError(f"{ds.root} has no readable images ({len(fs.skipped)} skipped)")
    return EncodedSet(
        fs.features,
        np.array([ds.labels[i] for i in fs.index]),
        [ds.generators[i] for i in fs.index],
        fs.paths,
        fs.skipped,
    )


def feature_adversary(enc: EncodedSet, backbone: ClipBackbone, cfg: TrainConfig, batch_size: int = 64):
    """Adversarial training's inner step (APT): -> adversary(head, round) giving the features of `enc`'s images
    attacked by PGD (cfg.adv_eps / adv_steps, the toolkit's own attack) on the head's current decision through
    the frozen encoder, row for row with enc.features. Images are decoded per batch, never all held."""
    import torch

    from toolkit.attacks import PGDConfig, PixelDetector, pgd
    from toolkit.models.causal_clip import fold_head
    from toolkit.models.detector import DeployedDetector
    from toolkit.pipelines.attack import load_pixels

    pre = backbone.preprocess_cfg
    labels = torch.from_numpy(enc.labels.astype(np.int64))

    def adversary(head, round_: int) -> np.ndarray:
        with torch.no_grad():
            linear = fold_head(head)
        model = PixelDetector(DeployedDetector(backbone.visual, linear), pre.mean, pre.std).eval()
        model.requires_grad_(False)
        attack = PGDConfig(eps=cfg.adv_eps, steps=cfg.adv_steps, target="decision", seed=1000 * cfg.seed + round_)
        out = []
        for i in range(0, len(enc.paths), batch_size):
            x_adv = pgd(model, load_pixels(enc.paths[i : i + batch_size], pre.size), labels[i : i + batch_size], attack)
            with torch.no_grad():
                out.append(model(x_adv)[1].numpy())
        return np.concatenate(out)

    return adversary


def _split_val(ds: LabelledImages, fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """Stratified (label x generator) hold-out of `fraction` of a training folder."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    strata: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(ds.labels, ds.generators, strict=True)):
        strata.setdefault(key, []).append(i)
    for idx in strata.values():
        idx = list(rng.permutation(idx))
        k = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val_idx += idx[:k]
        train_idx += idx[k:]
    return ds.subset(sorted(train_idx)), ds.subset(sorted(val_idx))


def train_detector(
    train_dir: str | Path,
    out_dir: str | Path,
    val_dir: str | Path | None = None,
    backbone_cfg: BackboneConfig | None = None,
    causal_cfg: CausalCLIPConfig | None = None,
    train_cfg: TrainConfig | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    backbone: ClipBackbone | None = None,
) -> dict:
    """Train on `train_dir`, fix the threshold on `val_dir` (or a held-out part), save to `out_dir`."""
    from toolkit.evaluation import binary_metrics
    from toolkit.kinds.detector import save_run as save_detector

    train_cfg = train_cfg or TrainConfig()
    backbone = backbone or load_backbone(backbone_cfg or BackboneConfig())
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    train_ds = find_labelled_images(train_dir)
    if val_dir is not None:
        val_ds = find_labelled_images(val_dir)
    else:
        train_ds, val_ds = _split_val(train_ds, train_cfg.val_fraction, train_cfg.seed)
    console.print(f"train: {describe(train_ds)}; val: {describe(val_ds)}")
    tr = encode(train_ds, backbone, cache_dir, batch_size, progress, "encode train")
    va = encode(val_ds, backbone, cache_dir, batch_size, progress, "encode val")

    d = backbone.feature_dim
    causal_cfg = causal_cfg or CausalCLIPConfig(feature_dim=d)
    if causal_cfg.feature_dim != d:
        causal_cfg = CausalCLIPConfig.from_dict({**causal_cfg.to_dict(), "feature_dim": d})
    adversary = feature_adversary(tr, backbone, train_cfg, batch_size) if train_cfg.adv_eps > 0 else None
    prompt = None
    if train_cfg.method == "prompt":  # CoOp context through the frozen text tower, folded after training
        from toolkit.models.causal_clip import LinearProbe
        from toolkit.models.prompt import PromptConfig, PromptHead, load_text_tower

        prompt = PromptHead(load_text_tower(backbone.config), PromptConfig(n_ctx=train_cfg.prompt_ctx), train_cfg.seed)
        prompt, history = train_head(tr.features, tr.labels, causal_cfg, train_cfg, progress, model=prompt,
                                     adversary=adversary)  # fmt: skip
        head = LinearProbe(d)
        head.head = prompt.fold()
        head.eval()
    else:
        head, history = train_head(tr.features, tr.labels, causal_cfg, train_cfg, progress, adversary=adversary)
    val_logits = predict_logits(head, va.features)
    threshold = choose_threshold(va.labels, val_logits)
    train_generators = sorted(set(tr.generators))
    config = {
        "backbone": backbone.config.to_dict(),
        "backbone_identity": backbone.identity,
        "preprocess": backbone.preprocess_cfg.to_dict(),
        "causal": causal_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "threshold": threshold,
        "train_generators": train_generators,
        **({"prompt": prompt.cfg.to_dict()} if prompt is not None else {}),
        "data": {
            "train": str(train_dir),
            "val": str(val_dir) if val_dir else f"{train_cfg.val_fraction:.0%} of train",
        },
    }
    metrics = {
        "val": binary_metrics(va.labels, val_logits, threshold),
        "train": binary_metrics(tr.labels, predict_logits(head, tr.features), threshold),
        "history": history,
        "skipped": [s.__dict__ for s in tr.skipped + va.skipped],
    }
    if hasattr(head, "keep_fraction"):
        metrics["mask_keep_fraction"] = head.keep_fraction()
    out_dir = save_detector(out_dir, head, config, metrics)
    if prompt is not None:  # the unfolded prompt (context vectors, scale): rebuildable and checkable
        from safetensors.torch import save_file

        from toolkit.io import atomic_path
        from toolkit.models.prompt import PROMPT_FILE

        with atomic_path(Path(out_dir) / PROMPT_FILE) as tmp:
            save_file(prompt.prompt_state(), str(tmp))
    if tr.skipped or va.skipped:
        write_skipped_csv(Path(out_dir) / "skipped.csv", tr.skipped + va.skipped)
    return {"run_dir": str(out_dir), "threshold": threshold, **metrics}


def evaluate_detector(
    run_dir: str | Path,
    test_dir: str | Path,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    backbone: ClipBackbone | None = None,
) -> dict:
    """Per-generator report of a trained run on a labelled folder, at the run's fixed threshold."""
    from toolkit.evaluation import per_generator_report
    from toolkit.kinds.detector import check_backbone
    from toolkit.kinds.detector import load_run as load_detector

    head, config = load_detector(run_dir)
    if backbone is None:
        backbone = load_backbone(BackboneConfig.from_dict(config["backbone"]))
    check_backbone(run_dir, config, backbone)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    ds = find_labelled_images(test_dir)
    enc = encode(ds, backbone, cache_dir, batch_size, progress, "encode test")
    logits = predict_logits(head, enc.features)
    report = per_generator_report(enc.labels, logits, enc.generators, config["threshold"], config["train_generators"])
    report["run"] = str(run_dir)
    report["test"] = str(test_dir)
    report["skipped"] = [s.__dict__ for s in enc.skipped]
    return report


def evaluate_to_files(
    run_dir: str | Path, test_dir: str | Path, stem: str | Path | None = None, cache_dir: Path | None = None
) -> tuple[dict, dict[str, Path]]:
    """`toolkit eval`: the per-generator report written as <stem>.json / .md (+ .skipped.csv); -> (report, files)."""
    from toolkit.evaluation import markdown_table
    from toolkit.io import write_json, write_text

    rep = evaluate_detector(run_dir, test_dir, cache_dir=cache_dir)
    stem = Path(stem) if stem else Path(run_dir) / "eval"
    files = {
        "json": write_json(stem.with_suffix(".json"), rep),
        "md": write_text(stem.with_suffix(".md"), markdown_table({Path(run_dir).name: rep})),
    }
    if rep["skipped"]:
        skipped = [Skipped(**s) for s in rep["skipped"]]
        files["skipped"] = write_skipped_csv(stem.with_name(stem.name + ".skipped.csv"), skipped)
    return rep, files
