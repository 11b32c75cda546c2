"""Detector kind: run directory -> artifact directory (detector.{fp32,fp16}.onnx + manifest.json), gated.

The graph: CLIP image encoder -> L2 normalise -> folded causal head; input `images` (N,3,H,W),
outputs `logit` (N,) and `feature` (N,D). fp16 keeps LayerNorm, softmax and everything from the
final LayerNorm on (projection, normalisation, head) in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.core import PRECISIONS, ExportKind, GateFailed, export_model
from export.onnx_export import EXTERNAL_DATA_BYTES
from export.verify import compare

__all__ = ["GateFailed", "export_detector", "verification_feeds"]


def verification_feeds(size: int, n: int = 64, images: str | Path | None = None, preprocess: dict | None = None,
                       seed: int = 0) -> list[np.ndarray]:  # fmt: skip
    """Batches of 1, 8 and the rest (n in all): real images from a folder when given, else seeded noise."""
    if images is not None:
        from toolkit.data.images import ImageDecodeError, is_image_file, load_image
        from toolkit.preprocess import PreprocessConfig, preprocess_batch

        files = sorted(p for p in Path(images).rglob("*") if p.is_file() and is_image_file(p))
        pil = []
        for f in files:
            try:
                pil.append(load_image(f))
            except ImageDecodeError:
                continue
            if len(pil) == n:
                break
        if len(pil) < 9:
            raise ValueError(f"{images}: need at least 9 readable images to verify the export, found {len(pil)}")
        x = preprocess_batch(pil, PreprocessConfig.from_dict(preprocess))
    else:
        x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    return [b for b in (x[:1], x[1:9], x[9:]) if len(b)]


def export_detector(
    run_dir: str | Path,
    out_dir: str | Path,
    precisions: tuple[str, ...] = PRECISIONS,
    gates: dict | None = None,
    verify_images: str | Path | None = None,
    verify_n: int = 64,
    seed: int = 0,
    log=print,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> dict:
    """Export the deployed detector of `run_dir` to `out_dir`; raises GateFailed with the numbers."""
    from toolkit.io import sha256_file
    from toolkit.models.detector import load_deployed_detector

    model, config = load_deployed_detector(run_dir)
    size = config["preprocess"]["size"]
    threshold = float(config["threshold"])
    kind = ExportKind(
        name="detector",
        module=model,
        example=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)),
        input_name="images",
        output_names=["logit", "feature"],
        compare=lambda ref, got: compare(ref, got, threshold),
        verify_feeds=verification_feeds(size, verify_n, verify_images, config["preprocess"], seed),
        manifest={
            "source_run": str(run_dir),
            "source_sha256": sha256_file(Path(run_dir) / "model.safetensors"),  # the torch reference must match
            "model_config": {k: config[k] for k in ("backbone", "backbone_identity", "causal", "train")},
            "preprocess": config["preprocess"],
            "threshold": threshold,
            "verify_source": str(verify_images) if verify_images else f"seeded noise (seed {seed})",
        },
        fp16_tail_after="LayerNormalization",
        gates=gates or {},
    )
    return export_model(kind, out_dir, precisions, log=log, external_data_bytes=external_data_bytes)
