"""The detector kind (CausalCLIP or the linear probe on frozen CLIP features): everything the toolkit knows about it.

Run directory (`toolkit train detector`): `model.safetensors` (the head) + `config.json` (+ `metrics.json`);
nothing is unpickled. Deployed graph: CLIP image encoder -> L2 normalise -> folded head, input `images`
(N,3,S,S) normalised as the backbone wants, outputs `logit` (N,) and `feature` (N,D); the decision is
`logit > threshold`, the threshold fixed on validation data and kept in the artifact's manifest.
fp16 keeps LayerNorm, softmax and everything from the final LayerNorm on (projection, norm, head) in fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from toolkit.compare import Fp32Gate, PrecisionGate
from toolkit.io import atomic_path, read_json, write_json
from toolkit.kinds.base import Capabilities, ExportSpec, KindError, ModelKind

FORMAT = "causal-deploy-toolkit/detector@1"
WEIGHTS = "model.safetensors"


def save_run(run_dir: str | Path, head, config: dict, metrics: dict | None = None) -> Path:
    """Write a detector run: the head's weights (safetensors), its config and metrics (JSON), atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(run_dir / "config.json", {"format": FORMAT, **config})
    if metrics is not None:
        write_json(run_dir / "metrics.json", metrics)
    return run_dir


def load_run(run_dir: str | Path):
    """-> (head in eval mode, config dict). Clear errors for a missing or foreign run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from toolkit.models.causal_clip import CausalCLIPConfig, build_head

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{run_dir} has no {p.name}; train one with 'toolkit train detector'")
    config = read_json(cfg_path)
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: not a detector checkpoint (format {config.get('format')!r}, want {FORMAT})")
    head = build_head(config["train"]["method"], CausalCLIPConfig.from_dict(config["causal"]))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: unreadable safetensors file ({e})") from None
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not match {cfg_path}: {e}") from None
    return head.eval(), config


def check_backbone(run_dir: str | Path, config: dict, backbone) -> None:
    """A head only makes sense on the features it was trained on: same model name and weights."""
    if backbone.identity != config["backbone_identity"]:
        raise ValueError(f"{run_dir} was trained on features of {config['backbone_identity']}, not {backbone.identity}")


def load_deployed(run_dir: str | Path):
    """Run directory -> (DeployedDetector in eval mode, run config): encoder + folded head."""
    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.models.causal_clip import fold_head
    from toolkit.models.detector import DeployedDetector

    head, config = load_run(run_dir)
    linear = fold_head(head)
    backbone = load_backbone(BackboneConfig.from_dict(config["backbone"]))
    check_backbone(run_dir, config, backbone)
    model = DeployedDetector(backbone.visual, linear).eval()
    model.requires_grad_(False)
    return model, config


def verification_feeds(size: int, n: int = 64, images: str | Path | None = None, preprocess: dict | None = None,
                       seed: int = 0) -> tuple[list[np.ndarray], np.ndarray | None]:  # fmt: skip
    """Batches of 1, 8 and the rest (n in all) and their labels: a seeded sample of a labelled folder (0_real /
    1_fake: the reduced precisions are then gated on AUC and accuracy too, at their own operating points), the
    first images of any other folder, or seeded noise (labels None)."""
    labels = None
    if images is not None:
        from toolkit.data.folders import find_labelled_images
        from toolkit.data.loader import load_labelled, sample_labelled

        try:
            labelled = len(set(find_labelled_images(images).labels)) == 2
        except ValueError:
            labelled = False
        if labelled:
            paths, labels = sample_labelled(images, n, seed)
        else:
            from toolkit.data.loader import discover_images

            paths = discover_images(images)[0][:n]
            labels = np.zeros(len(paths), int)
        arrays, labels = load_labelled(paths, labels, preprocess)
        x = np.concatenate(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
        if len(x) < 9:
            raise ValueError(f"{images}: need at least 9 readable images to verify the export, found {len(x)}")
        labels = labels if labelled else None
    else:
        x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    cuts = [(0, 1), (1, 9), (9, len(x))]
    return [x[a:b] for a, b in cuts if b > a], labels


def parity_stats(ref: dict, got: dict, threshold: float, got_threshold: float | None = None) -> dict:
    """A detector's outputs (`logit`, `feature`) against a reference's, on the same inputs; decisions at
    `threshold` for the reference and at `got_threshold` (default: the same) for the candidate."""
    lr, lg = ref["logit"].astype(np.float64), got["logit"].astype(np.float64)
    fr, fg = ref["feature"].astype(np.float64), got["feature"].astype(np.float64)
    cos = (fr * fg).sum(1) / (np.linalg.norm(fr, axis=1) * np.linalg.norm(fg, axis=1) + 1e-12)
    tg = threshold if got_threshold is None else got_threshold
    return {
        "max_abs_logit": float(np.abs(lr - lg).max()),
        "max_abs_feature": float(np.abs(fr - fg).max()),
        "cosine_logits": float(lr @ lg / (np.linalg.norm(lr) * np.linalg.norm(lg) + 1e-12)),
        "min_cosine_feature": float(cos.min()),
        "mean_cosine_feature": float(cos.mean()),
        "decision_agreement": float(((lr > threshold) == (lg > tg)).mean()),
        "threshold": float(tg),
        "n": len(lr),
    }


class DetectorKind(ModelKind):
    name = "detector"
    run_format = FORMAT
    weights_file = WEIGHTS
    output_names = ("logit", "feature")
    capabilities = Capabilities(detects=True, purifies=False, int8=None, trt=True)
    gate_types: ClassVar[dict] = {"fp32": Fp32Gate, "fp16": PrecisionGate, "bf16": PrecisionGate, "int8": PrecisionGate}
    parity_columns = (
        ("max_abs_logit", "max |Δlogit|"),
        ("max_abs_feature", "max |Δfeature|"),
        ("cosine_logits", "cos logits"),
        ("min_cosine_feature", "min cos feature"),
        ("decision_agreement", "agreement"),
    )

    def load_reference(self, run_dir: Path):
        return load_deployed(run_dir)[0]

    def parity(self, ref: dict, got: dict, threshold: float | None = None, labels=None, refit: bool = False,
               got_threshold: float | None = None) -> dict:  # fmt: skip
        """Logit/feature closeness and decision agreement; with labels, AUC/AP/acc of both and the drops.
        `refit` (needs labels): the candidate is judged at its own operating point, fp32's false-positive rate
        on these real images (`operating_point` in the stats: the map its artifact seals); `got_threshold`: at
        a given one (the sealed map's, when bench re-checks a deployed precision). Default: fp32's threshold."""
        from toolkit.evaluation import binary_metrics, fpr_matched_map, map_threshold

        if threshold is None:
            raise KindError("detector parity needs the decision threshold")
        labelled = labels is not None and len(set(np.asarray(labels).tolist())) == 2
        op = None
        if refit and labelled:
            op = fpr_matched_map(labels, ref["logit"], got["logit"])
            got_threshold = map_threshold(threshold, op)
        stats = parity_stats(ref, got, threshold, got_threshold)
        if op is not None:
            stats["operating_point"] = op
        if labelled:
            a, b = (
                binary_metrics(labels, ref["logit"], threshold),
                binary_metrics(labels, got["logit"], stats["threshold"]),
            )
            stats.update(reference_metrics=a, metrics=b)
            for k in ("auc", "ap", "acc"):
                stats[f"{k}_drop_points"] = 100 * (a[k] - b[k])
        return stats

    def export_spec(self, run_dir: Path, verify_images: Path | None = None, verify_n: int = 64, seed: int = 0):
        import torch

        model, config = load_deployed(run_dir)
        size = config["preprocess"]["size"]
        threshold = float(config["threshold"])
        feeds, labels = verification_feeds(size, verify_n, verify_images, config["preprocess"], seed)
        return ExportSpec(
            module=model,
            example=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)),
            verify_feeds=feeds,
            verify_labels=labels,
            manifest={
                "model_config": {
                    **{k: config[k] for k in ("backbone", "backbone_identity", "causal", "train")},
                    "train_generators": config.get("train_generators"),  # seen vs unseen in artifact evaluations
                },
                "model_name": config["backbone_identity"],
                "preprocess": config["preprocess"],
                "threshold": threshold,
                "threshold_provenance": {"rule": "balanced accuracy on validation", "data": config["data"]["val"]},
                "verify_source": str(Path(verify_images).resolve()) if verify_images else f"seeded noise (seed {seed})",
            },
            fp16_tail_after="LayerNormalization",
            threshold=threshold,
        )


KIND = DetectorKind()
