"""`torch` engine: runs an nn.Module (the PyTorch fp32 reference) behind the Engine contract."""

from __future__ import annotations

import numpy as np

from toolkit.engines.base import Engine, TensorSpec


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, module, inputs: list[TensorSpec], outputs: list[TensorSpec], device: str = "cpu"):
        super().__init__(inputs, outputs)
        self.module, self.device = module, device

    def activate(self) -> None:
        self.module.to(self.device).eval()

    def synchronize(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(feed[s.name]).to(self.device) for s in self.inputs]
        with torch.inference_mode():
            res = self.module(*args)
        res = res if isinstance(res, (tuple, list)) else (res,)
        return {s.name: r.detach().cpu().numpy() for s, r in zip(self.outputs, res, strict=True)}
