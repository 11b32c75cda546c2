"""Train a CausalCLIP head or the linear probe on precomputed features, and fix its threshold.

Features are cached by `toolkit.data.features`, so an epoch is a few matrix products: full
retraining with different loss weights never touches the image encoder.
"""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

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
) -> tuple[CausalCLIP | LinearProbe, list[dict]]:
    """features (N, D), labels (N,) in {0, 1} -> trained head (eval mode) and per-epoch history.

    `model`: a head built by the caller (the prompt head needs the text tower); default build_head(method)."""
    from toolkit.progress import progress_bar

    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    if len(np.unique(labels)) < 2:
        raise ValueError("training needs both real (0) and generated (1) images; only one class was found")
    torch.manual_seed(cfg.seed)
    model = model if model is not None else build_head(cfg.method, causal_cfg)
    trainable = [p for n, p in model.named_parameters() if n != "mask_logits" and p.requires_grad]
    groups = [{"params": trainable, "lr": cfg.lr}]
    if isinstance(model, CausalCLIP):
        groups.append({"params": [model.mask_logits], "lr": cfg.mask_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.float32))
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged tail: HSIC needs a full batch
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    step = 0
    model.train()
    with progress_bar(f"train {cfg.method}", cfg.epochs, progress) as advance:
        for epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            sums: dict[str, float] = {}
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                tau = anneal_tau(step, total, causal_cfg.tau_start, causal_cfg.tau_end)
                loss, parts = model.loss(x[idx], y[idx], tau)
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
