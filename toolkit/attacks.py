"""L-infinity PGD with random start (Madry et al. 2018) against a CLIP-based detector, in pixel space.

Images are attacked at the model's input resolution, as values in [0, 1]; normalisation happens
inside the differentiable model (`PixelDetector`). Two targets:
- `embedding`: push the CLIP image embedding away from the clean one (maximise 1 - cosine), the
  usual attack on CLIP-based multimodal models;
- `decision`: push the detector's logit away from the true label (maximise the BCE loss).
eps and the step size are in 1/255 units. The result is rounded to 8 bits inside the eps ball, so
what is written as PNG is exactly what was evaluated.

Adaptive attacks (Athalye et al. 2018; Tramer et al. 2020) attack the detector *through* a defence
(`Defence`): gradients flow through a differentiable one (the one-step student), and through a
non-differentiable or too-deep one by BPDA with the identity (forward through the defence, backward as if it
were absent: JPEG, TV, the multi-step purifiers). A stochastic defence is attacked with EOT: each step
averages the gradient over `eot` fresh draws of its randomness, drawn from the attacker's own seeds, never
the seed the defence is evaluated with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

TARGETS = ("embedding", "decision")


@dataclass
class PGDConfig:
    eps: float = 8.0  # /255
    steps: int = 10
    step_size: float | None = None  # /255; default 2.5 * eps / steps
    target: str = "decision"
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"attack target must be one of {TARGETS}, got {self.target!r}")
        if self.eps < 0 or self.steps < 1:
            raise ValueError(f"need eps >= 0 and steps >= 1, got eps={self.eps}, steps={self.steps}")
        if self.eps != int(self.eps):
            # attacked images live on the 8-bit grid (written as PNG, evaluated as written); an 8-bit image within
            # eps of the 8-bit clean image differs from it by whole steps, so eps 0.5 would allow no change at all
            # and eps 2.5 the same as 2: refuse rather than silently attack with a smaller budget
            raise ValueError(
                f"eps must be a whole number of 8-bit steps (in /255), got {self.eps}: attacked images are stored "
                f"on the 8-bit grid, where eps {self.eps} allows the same images as eps {int(self.eps)}"
            )

    @property
    def alpha(self) -> float:
        return (self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps) / 255.0


@dataclass(frozen=True)
class Defence:
    """A defence an adaptive attacker sees: `fn(images, seed)` maps images in [0, 1] to defended images in
    [0, 1] (`seed` draws its randomness, ignored by a deterministic one). `differentiable`: gradients flow
    through `fn`; otherwise BPDA with the identity. `eot`: draws of the randomness averaged per PGD step."""

    fn: Callable[[torch.Tensor, int], torch.Tensor]
    differentiable: bool
    eot: int = 1

    def __post_init__(self) -> None:
        if self.eot < 1:
            raise ValueError(f"EOT needs at least one draw per step, got eot={self.eot}")

    def attacked_input(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """What the detector sees during the attack, with the gradient path the attack uses."""
        if self.differentiable:
            return self.fn(x, seed)
        with torch.no_grad():
            out = self.fn(x.detach(), seed)
        return x + (out - x).detach()  # BPDA: the defence's output forward, the identity's gradient backward


_NO_DEFENCE = Defence(lambda x, seed: x, True)  # plain PGD: the attack sees the detector's input itself


class PixelDetector(nn.Module):
    """[0,1] pixels -> normalise -> deployed detector -> (logit, feature)."""

    def __init__(self, detector: nn.Module, mean, std):
        super().__init__()
        self.detector = detector
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector((x - self.mean) / self.std)


def attack_loss(
    model: nn.Module,
    x: torch.Tensor,
    x_clean: torch.Tensor,
    labels: torch.Tensor,
    target: str,
    clean_feature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example loss the attacker maximises."""
    logit, feature = model(x)
    if target == "embedding":
        ref = clean_feature if clean_feature is not None else model(x_clean)[1].detach()
        return 1.0 - nn.functional.cosine_similarity(feature, ref, dim=-1)
    return nn.functional.binary_cross_entropy_with_logits(logit, labels.float(), reduction="none")


def pgd(
    model: nn.Module,
    x_clean: torch.Tensor,
    labels: torch.Tensor,
    cfg: PGDConfig,
    defence: Defence | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """x_clean (N,3,H,W) in [0,1] (8-bit values) -> adversarial images on the same 8-bit grid, |delta| <= eps;
    with `defence`, adaptive: the loss is the detector's on the defended image (see `Defence`).
    `chunk`: images per forward/backward pass (None: all N at once). The autograd graph through a k-call purifier
    holds k UNets' activations per image: a 4-call student on 512 images at once took more than 24 GiB (killed),
    so adaptive attacks chunk. Each image's gradient is its own, so a deterministic defence gives the same images
    chunked or not; a stochastic one draws its noise per chunk (the same distribution, other draws)."""
    model.eval()
    through = defence or _NO_DEFENCE
    eps = cfg.eps / 255.0
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        ref = model(x_clean)[1].detach() if cfg.target == "embedding" else None
    delta = (torch.rand(x_clean.shape, generator=gen) * 2 - 1) * eps if cfg.random_start else torch.zeros_like(x_clean)
    delta = (x_clean + delta).clamp(0, 1) - x_clean
    size = chunk or max(1, len(x_clean))
    parts = [slice(i, i + size) for i in range(0, len(x_clean), size)] or [slice(None)]
    for step in range(cfg.steps):
        # EOT: the mean loss over fresh draws; attacker seeds start past the evaluation's seed 0
        seeds = [1 + (cfg.seed * cfg.steps + step) * through.eot + k for k in range(through.eot)]
        grads = []
        for part in parts:
            d = delta[part].detach().requires_grad_(True)
            x_in = [through.attacked_input(x_clean[part] + d, s) for s in seeds]
            r = ref[part] if ref is not None else None
            loss = sum(attack_loss(model, v, x_clean[part], labels[part], cfg.target, r).sum() for v in x_in)
            grads.append(torch.autograd.grad(loss / through.eot, d)[0])
        with torch.no_grad():
            delta = (delta + cfg.alpha * torch.cat(grads).sign()).clamp(-eps, eps)
            delta = (x_clean + delta).clamp(0, 1) - x_clean
    return quantise_in_ball(x_clean, x_clean + delta.detach(), cfg.eps)


def quantise_in_ball(x_clean: torch.Tensor, x_adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Round to 8 bits, staying within eps (in /255) of the 8-bit clean image and inside [0, 255]."""
    c = torch.round(x_clean * 255)
    a = torch.round(x_adv * 255)
    lo, hi = (c - int(eps)).clamp(0, 255), (c + int(eps)).clamp(0, 255)  # eps is whole (PGDConfig refuses others)
    return torch.minimum(torch.maximum(a, lo), hi) / 255.0


@torch.no_grad()
def success(
    model: nn.Module,
    x_clean: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    target: str,
    min_cosine_drop: float = 0.1,
) -> torch.Tensor:
    """Per-example success: decision target -> the decision is wrong; embedding target -> cosine to clean < 1 - drop."""
    logit, feat = model(x_adv)
    if target == "decision":
        return (logit > threshold).long() != labels
    ref = model(x_clean)[1]
    return nn.functional.cosine_similarity(feat, ref, dim=-1) < 1.0 - min_cosine_drop
