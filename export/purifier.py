"""Purifier kind: purifier run -> artifact (purifier.{fp32,fp16}.onnx + manifest), through the export core.

The deployed graph is the one-step student: input `images` (N,3,H,W) in [0, 1], output `purified`
(N,3,H,W) in [0, 1]. Gates: fp32 max |pixel diff| <= 1e-4; fp16 PSNR against PyTorch >= 40 dB.
fp16 keeps the normalisation layers (GroupNorm and the ops it lowers to) in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.core import PRECISIONS, ExportKind, export_model
from export.onnx_export import EXTERNAL_DATA_BYTES
from export.verify import IMAGE_GATES, image_parity


def export_purifier(
    run_dir: str | Path,
    out_dir: str | Path,
    precisions: tuple[str, ...] = PRECISIONS,
    gates: dict | None = None,
    seed: int = 0,
    log=print,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> dict:
    from toolkit.io import sha256_file
    from toolkit.models.purifier import OneStepPurifier
    from toolkit.pipelines.purifier import load_purifiers

    nets, cfg = load_purifiers(run_dir)
    module = OneStepPurifier(nets["student"]).eval()
    s = cfg.sample_size
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (17, 3, s, s)).astype(np.float32)
    g = {p: (gates or {}).get(p) or IMAGE_GATES[p]() for p in PRECISIONS}
    kind = ExportKind(
        name="purifier",
        module=module,
        example=torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(seed)),
        input_name="images",
        output_names=["purified"],
        compare=image_parity,
        verify_feeds=[x[:1], x[1:9], x[9:]],
        manifest={
            "source_run": str(run_dir),
            "source_sha256": sha256_file(Path(run_dir) / "student.safetensors"),
            "model_config": cfg.to_dict(),
            "preprocess": {
                "size": s,
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
            "verify_source": f"seeded uniform noise (seed {seed})",
        },
        fp16_keep_ops=(
            "GroupNormalization",
            "InstanceNormalization",
            "LayerNormalization",
            "Softmax",
            "ReduceMean",
            "Sqrt",
            "Pow",
        ),
        fp16_tail_after=None,
        gates=g,
    )
    return export_model(kind, out_dir, precisions, log=log, external_data_bytes=external_data_bytes)
