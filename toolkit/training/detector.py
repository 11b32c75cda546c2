"""Train a CausalCLIP head or the linear probe on precomputed features, and fix its threshold.

Features are cached by `toolkit.data.features`, so an epoch is a few matrix products: full
retraining with different loss weights never touches the image encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from toolkit.models.causal_clip import METHODS, CausalCLIP, CausalCLIPConfig, LinearProbe, anneal_tau, build_head

__all__ = ["METHODS", "TrainConfig", "build_head", "choose_threshold", "predict_logits", "train_head"]


@dataclass
class TrainConfig:
    method: str = "causal"  # causal (CausalCLIP) | probe (UnivFD linear probe) | prompt (CoOp prompts, folded)
    epochs: int = 80
    batch_size: int = 128
    lr: float = 5e-3
    mask_lr: float = 5e-2  # mask logits move on their own, faster schedule
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2  # held out of the training folder when no validation folder is given
    prompt_ctx: int = 4  # prompt method: learnable context vectors per class prompt
    # Adversarial training (APT, Li et al. CVPR 2024, for --method prompt; any head accepts it): every
    # `adv_refresh` epochs the training images are attacked by PGD (`adv_steps`, eps `adv_eps` /255, the
    # toolkit's own attack) on the current head's decision through the frozen encoder, and each step's loss
    # is the mean of the clean and the adversarial batch (the same images). 0 = off.
    adv_eps: float = 0.0
    adv_steps: int = 3
    adv_refresh: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.adv_eps < 0 or self.adv_eps != int(self.adv_eps):
            raise ValueError(f"adv_eps must be a whole number of 8-bit steps >= 0 (in /255), got {self.adv_eps}")
        if self.adv_steps < 1 or self.adv_refresh < 1:
            raise ValueError(f"adv_steps and adv_refresh must be >= 1, got {self.adv_steps}, {self.adv_refresh}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    causal_cfg: CausalCLIPConfig,
    cfg: TrainConfig,
    progress: bool = True,
    model: torch.nn.Module | None = None,
    adversary: Callable[[torch.nn.Module, int], np.ndarray] | None = None,
) -> tuple[CausalCLIP | LinearProbe, list[dict]]:
    """features (N, D), labels (N,) in {0, 1} -> trained head (eval mode) and per-epoch history.

    `model`: a head built by the caller (the prompt head needs the text tower); default build_head(method).
    `adversary(head, round)` (needed when cfg.adv_eps > 0): features (N, D) of the same images, in the same
    order, attacked against `head` as it is now (it runs in eval mode; `round` seeds the attack)."""
    from toolkit.progress import progress_bar

    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    if len(np.unique(labels)) < 2:
        raise ValueError("training needs both real (0) and generated (1) images; only one class was found")
    if cfg.adv_eps > 0 and adversary is None:
        raise ValueError("adversarial training (adv_eps > 0) needs the images: train through train_detector")
    torch.manual_seed(cfg.seed)
    model = model if model is not None else build_head(cfg.method, causal_cfg)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if getattr(model, "standardiser", None) is not None:
        model.standardiser.fit(x)  # training statistics only: validation and test are never seen here
    trainable = [p for n, p in model.named_parameters() if n != "mask_logits" and p.requires_grad]
    groups = [{"params": trainable, "lr": cfg.lr}]
    if isinstance(model, CausalCLIP):
        groups.append({"params": [model.mask_logits], "lr": cfg.mask_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    y = torch.from_numpy(labels.astype(np.float32))
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged tail: HSIC needs a full batch
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    step = 0
    x_adv = None
    model.train()
    with progress_bar(f"train {cfg.method}", cfg.epochs, progress) as advance:
        for epoch in range(cfg.epochs):
            if cfg.adv_eps > 0 and epoch % cfg.adv_refresh == 0:
                model.eval()
                advance(0, stage=f"PGD round {epoch // cfg.adv_refresh}")
                x_adv = torch.from_numpy(np.ascontiguousarray(adversary(model, epoch // cfg.adv_refresh), np.float32))
                if x_adv.shape != x.shape:
                    raise ValueError(f"adversary returned features {tuple(x_adv.shape)}, want {tuple(x.shape)}")
                model.train()
            perm = torch.randperm(n, generator=gen)
            sums: dict[str, float] = {}
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                tau = anneal_tau(step, total, causal_cfg.tau_start, causal_cfg.tau_end)
                loss, parts = model.loss(x[idx], y[idx], tau)
                if x_adv is not None:
                    adv_loss, adv_parts = model.loss(x_adv[idx], y[idx], tau)
                    loss = 0.5 * (loss + adv_loss)
                    parts = {**parts, "adv_bce": adv_parts["bce"], "loss": float(loss.detach())}
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v / steps_per_epoch
            sums["epoch"] = epoch
            sums["tau"] = tau
            if isinstance(model, CausalCLIP):
                sums["kept"] = model.keep_fraction()
            history.append(sums)
            advance(loss=sums["loss"])
    return model.eval(), history


@torch.no_grad()
def predict_logits(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()


def choose_threshold(labels: np.ndarray, logits: np.ndarray) -> float:
    """Logit threshold maximising balanced accuracy on a validation set (ties -> closest to 0)."""
    labels = np.asarray(labels)
    cands = np.unique(logits)
    mids = np.concatenate([[cands[0] - 1.0], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1.0], [0.0]])
    real, fake = logits[labels == 0], logits[labels == 1]
    best, best_t = -1.0, 0.0
    for t in mids:
        bal = ((real <= t).mean() if len(real) else 1.0) + ((fake > t).mean() if len(fake) else 1.0)
        if bal > best + 1e-12 or (abs(bal - best) <= 1e-12 and abs(t) < abs(best_t)):
            best, best_t = bal, float(t)
    return best_t
