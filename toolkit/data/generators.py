"""Small image generators for the embedded benchmark, each trained briefly on real crops.

Four autoencoder families differ only in how the decoder upsamples (the artifact source studied
in the forensics literature: transposed convolution, nearest + conv, pixel shuffle, bilinear + conv),
and a diffusion family reconstructs real crops through a small diffusers `UNet2DModel` (DDPM
training, SDEdit-style noise-to-t then DDIM denoising, as diffusion-reconstruction detectors do).
Images are float tensors in [-1, 1], (B, 3, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

AE_FAMILIES = ("ae_transposed", "ae_nearest", "ae_pixelshuffle", "ae_bilinear")
FAMILIES = (*AE_FAMILIES, "diffusion")


def _up_block(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "ae_transposed":
        return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
    if kind == "ae_nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "ae_pixelshuffle":
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))
    if kind == "ae_bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 3, padding=1)
        )
    raise ValueError(f"unknown autoencoder family {kind!r}; choose from {AE_FAMILIES}")


class UpsamplingAutoencoder(nn.Module):
    """(B, 3, H, W) -> (B, 3, H, W); a 4x spatial bottleneck, the decoder's upsampler set by `kind`."""

    def __init__(self, kind: str, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.GELU(),  # (B, w, H/2, W/2)
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1), nn.GELU(),  # (B, 2w, H/4, W/4)
            nn.Conv2d(width * 2, 12, 1),  # (B, 12, H/4, W/4) bottleneck
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(12, width * 2, 3, padding=1), nn.GELU(),
            _up_block(kind, width * 2, width), nn.GELU(),  # (B, w, H/2, W/2)
            _up_block(kind, width, width), nn.GELU(),  # (B, w, H, W)
            nn.Conv2d(width, 3, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class GeneratorTrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 4e-3
    seed: int = 0
    diffusion_steps: int = 200  # DDPM training steps of the diffusion family (a slower learner)
    diffusion_strength: float = 0.25  # SDEdit noise level t*/T for reconstructions
    diffusion_sample_steps: int = 8  # DDIM steps from t* back to 0


def _batches(real: torch.Tensor, steps: int, batch: int, gen: torch.Generator):
    for _ in range(steps):
        idx = torch.randint(0, real.shape[0], (batch,), generator=gen)
        x = real[idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        yield torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_autoencoder(kind: str, real: torch.Tensor, cfg: GeneratorTrainConfig, advance: Callable = lambda **_: None):
    torch.manual_seed(cfg.seed)
    model = UpsamplingAutoencoder(kind)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    for x in _batches(real, cfg.steps, cfg.batch_size, gen):
        loss = F.l1_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        advance(loss=loss.item())
    return model.eval()


def tiny_unet(sample_size: int):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        # no attention blocks: at 32x32 tokens they cost 10x on a CPU and the family needs none
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def train_diffusion(real: torch.Tensor, cfg: GeneratorTrainConfig, advance: Callable = lambda **_: None):
    """DDPM training of a tiny UNet2DModel on real crops -> (unet, scheduler).

    x0 ("sample") prediction: a briefly trained epsilon-predictor leaves visible noise, x0 does not.
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(cfg.seed)
    unet = tiny_unet(real.shape[-1])
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr / 2)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for x in _batches(real, cfg.diffusion_steps, cfg.batch_size, gen):
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (x.shape[0],), generator=gen)
        pred = unet(sched.add_noise(x, noise, t), t).sample
        loss = F.mse_loss(pred, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        advance(loss=loss.item())
    return unet.eval(), sched


def diffusion_reconstruct(unet, x: torch.Tensor, cfg: GeneratorTrainConfig, seed: int) -> torch.Tensor:
    """SDEdit: 1. noise x to t* = strength * T; 2. DDIM-denoise back to t = 0 in a few steps."""
    from toolkit.models.purifier import sdedit

    return sdedit(
        lambda s, t: unet(s, t).sample, x, int(cfg.diffusion_strength * 1000), cfg.diffusion_sample_steps, 1000, seed
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1.0
