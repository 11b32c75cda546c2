"""The deployed detector graph: CLIP image encoder -> L2 normalise -> folded causal head.

images (N, 3, S, S) -> logit (N,), feature (N, D). This is what `export/` turns into ONNX and what the
`torch` engine runs; the mask is already folded (`fold_mask`), so the graph is encoder + one Linear.
"""

from __future__ import annotations

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
