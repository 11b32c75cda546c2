"""The deployed detector graph: CLIP image encoder -> L2 normalise -> folded causal head.

images (N, 3, S, S) -> logit (N,), feature (N, D). This is what `export/` turns into ONNX and what the
`torch` engine runs; the mask is already folded (`fold_mask`), so the graph is encoder + one Linear.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class DeployedDetector(nn.Module):
    def __init__(self, visual: nn.Module, head: nn.Linear):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = nn.functional.normalize(self.visual(images), dim=-1)  # (N, D)
        return self.head(feature).squeeze(-1), feature  # (N,), (N, D)


def load_deployed_detector(run_dir: str | Path) -> tuple[DeployedDetector, dict]:
    """Run directory -> (deployed detector in eval mode, run config)."""
    from toolkit.checkpoint import check_backbone, load_detector
    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.models.causal_clip import CausalCLIP, fold_mask

    head, config = load_detector(run_dir)
    linear = fold_mask(head) if isinstance(head, CausalCLIP) else head.head
    backbone = load_backbone(BackboneConfig.from_dict(config["backbone"]))
    check_backbone(run_dir, config, backbone)
    model = DeployedDetector(backbone.visual, linear).eval()
    model.requires_grad_(False)
    return model, config
