"""CausalCLIP (arXiv 2512.13285): a learned causal feature mask on frozen CLIP features, with HSIC.

f (B, D) L2-normalised CLIP features -> standardised z = (f - mean) / std with the training features'
statistics -> per-dimension keep/drop mask m (binary Gumbel-Softmax while training, hard `logit > 0` at
inference) -> causal part c = m*z, non-causal part n = (1-m)*z -> linear head on c. Training loss (all
weights are config fields; the paper's code is not public):

    BCE(head(c), y) + hsic_weight * HSIC(c, n)
    + noncausal_weight * [BCE(aux(n.detach()), y) + BCE(aux(n), 0.5) through the mask only]
    + budget_weight * (mean keep probability - keep_ratio)^2

`fold_mask` turns standardisation + hard mask + head into one `nn.Linear` with the same logits
(w*m/std, b - (w*m/std).mean). The UnivFD linear probe (Ojha et al. 2023) on the same standardised
features is `LinearProbe`; `fold_head` folds either.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class CausalCLIPConfig:
    feature_dim: int = 768
    init_keep_logit: float = 0.5  # initial mask logit: sigmoid(0.5) ~ 62% kept, so both parts start non-empty
    tau_start: float = 1.0  # Gumbel-Softmax temperature at the first step
    tau_end: float = 0.05  # ... and at the last step (exponential annealing)
    straight_through: bool = False  # hard forward / soft backward samples while training
    hsic_weight: float = 1.0  # lambda: independence of causal and non-causal parts
    noncausal_weight: float = 0.1  # the non-causal part should carry no label information
    keep_ratio: float = 0.5  # target fraction of kept dimensions
    budget_weight: float = 1.0  # weight of the keep-ratio budget penalty
    hsic_bandwidth: str = "median"  # RBF bandwidth: "median" heuristic or a float given as a string
    hsic_kernel: str = "rbf"  # rbf | linear (ablation: a linear kernel only sees cross-covariance)
    hsic_project: int = 0  # > 0: HSIC on a fixed random projection of c and n to this many dims (ablation)
    # Standardise features with the training set's per-dimension mean / std before mask and head (folded at
    # export). Why: CLIP features share one dominant direction. Random-weight tiny-vit-64 on the embedded
    # benchmark: |mean feature| 0.946 of a unit norm, per-dimension std 0.037; the probe (lr 5e-3, 80 epochs)
    # on raw features reached in-family test AUC 60.6, standardised 78.4 with the same optimiser and steps
    # (training AUC at 800 epochs: 91.5 standardised, 70.2 raw: raw features are ill-conditioned, not weak).
    # Configs written before this field existed load with False (their heads were trained on raw features).
    standardise: bool = True

    def __post_init__(self) -> None:
        if self.hsic_kernel not in ("rbf", "linear"):
            raise ValueError(f"hsic_kernel must be rbf or linear, got {self.hsic_kernel!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CausalCLIPConfig:
        known = cls.__dataclass_fields__
        return cls(**{"standardise": False, **{k: v for k, v in d.items() if k in known}})


# Named configs, in the spirit of open_clip's model_configs: the feature size of each backbone.
PRESETS: dict[str, CausalCLIPConfig] = {
    "causal-vit-l-14": CausalCLIPConfig(feature_dim=768),
    "causal-vit-b-16": CausalCLIPConfig(feature_dim=512),
    "causal-tiny": CausalCLIPConfig(feature_dim=64),
}


# ---------------------------------------------------------------------------------------- HSIC
def _pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(dim=1, keepdim=True)  # (B, 1)
    return (sq + sq.T - 2.0 * x @ x.T).clamp_min(0.0)  # (B, B)


def rbf_kernel(x: torch.Tensor, bandwidth: str | float = "median") -> torch.Tensor:
    """RBF Gram matrix exp(-d^2 / (2 sigma^2)); median heuristic: sigma^2 = median(d^2) / 2 over i != j."""
    d2 = _pairwise_sq_dists(x)
    if bandwidth == "median":
        n = x.shape[0]
        off = d2[~torch.eye(n, dtype=torch.bool, device=x.device)]
        sigma2 = (off.median().detach() / 2.0).clamp_min(1e-12)
    else:
        sigma2 = torch.as_tensor(float(bandwidth) ** 2, dtype=x.dtype, device=x.device)
    return torch.exp(-d2 / (2.0 * sigma2))


def hsic(x: torch.Tensor, y: torch.Tensor, bandwidth: str | float = "median", kernel: str = "rbf") -> torch.Tensor:
    """Biased HSIC estimate (Gretton et al. 2005): tr(K H L H) / (n - 1)^2; x (B, Dx), y (B, Dy).
    kernel "linear": K = x x^T (HSIC is then the squared Frobenius norm of the cross-covariance)."""
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"HSIC needs at least 3 samples, got {n}")
    if kernel == "linear":
        k, l = x @ x.T, y @ y.T  # noqa: E741
    else:
        k = rbf_kernel(x, bandwidth)
        l = rbf_kernel(y, bandwidth)  # noqa: E741
    kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()  # H K H
    return (kc * l).sum() / (n - 1) ** 2


# ------------------------------------------------------------------------------ standardise
class FeatureStandardiser(nn.Module):
    """z = (f - mean) / std per dimension; the statistics are buffers (saved with the head), set once by
    `fit` on the training features before the first step and never trained."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    @torch.no_grad()
    def fit(self, f: torch.Tensor) -> None:
        """f (N, D): the training features."""
        self.mean.copy_(f.mean(dim=0))
        self.std.copy_(f.std(dim=0, unbiased=False).clamp_min(1e-6))  # a constant dimension must not divide by 0

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std  # (B, D)


def _standardiser(cfg: CausalCLIPConfig) -> FeatureStandardiser | None:
    return FeatureStandardiser(cfg.feature_dim) if cfg.standardise else None


def _fold_linear(weight: torch.Tensor, bias: torch.Tensor, st: FeatureStandardiser | None) -> nn.Linear:
    """Linear(D, 1) with weight (1, D) and bias (1,) applied after `st` -> one Linear on the raw features:
    w . (f - mean) / std + b = (w / std) . f + (b - (w / std) . mean)."""
    folded = nn.Linear(weight.shape[1], 1)
    with torch.no_grad():
        if st is None:
            folded.weight.copy_(weight)
            folded.bias.copy_(bias)
        else:
            w = weight.double() / st.std.double()
            folded.weight.copy_(w)
            folded.bias.copy_(bias.double() - (w * st.mean.double()).sum(dim=1))
    return folded


# ----------------------------------------------------------------------------------- the mask
def gumbel_keep_mask(logits: torch.Tensor, batch: int, tau: float, hard: bool = False) -> torch.Tensor:
    """Per-sample binary Gumbel-Softmax over {keep, drop} per dimension: logits (D,) -> mask (B, D).

    Two-class softmax with class logits (l, 0), i.e. the binary-concrete relaxation; as tau -> 0 the
    samples become 0/1.
    """
    two = torch.stack([logits, torch.zeros_like(logits)], dim=-1)  # (D, 2)
    two = two.unsqueeze(0).expand(batch, -1, -1)  # (B, D, 2)
    return F.gumbel_softmax(two, tau=tau, hard=hard, dim=-1)[..., 0]  # (B, D)


def anneal_tau(step: int, total: int, tau_start: float, tau_end: float) -> float:
    if total <= 1:
        return tau_end
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return float(math.exp(math.log(tau_start) + frac * (math.log(tau_end) - math.log(tau_start))))


class CausalCLIP(nn.Module):
    """Mask + head on precomputed features. forward(f (B, D)) -> logits (B,) with the hard mask."""

    def __init__(self, cfg: CausalCLIPConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_dim
        self.standardiser = _standardiser(cfg)
        self.mask_logits = nn.Parameter(torch.full((d,), float(cfg.init_keep_logit)))
        self.head = nn.Linear(d, 1)
        self.aux_head = nn.Linear(d, 1)  # probes the non-causal part; not part of the deployed model
        if cfg.hsic_project > 0:  # fixed (seed 0, not trained, not saved): the same projection for every run
            g = torch.Generator().manual_seed(0)
            proj = torch.randn(d, cfg.hsic_project, generator=g) / math.sqrt(cfg.hsic_project)
            self.register_buffer("hsic_proj", proj, persistent=False)
        else:
            self.hsic_proj = None

    def hard_mask(self) -> torch.Tensor:
        return (self.mask_logits > 0).to(self.mask_logits.dtype)  # (D,)

    def keep_fraction(self) -> float:
        return float(self.hard_mask().mean())

    def _z(self, f: torch.Tensor) -> torch.Tensor:
        return f if self.standardiser is None else self.standardiser(f)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self._z(f) * self.hard_mask()).squeeze(-1)  # (B,)

    def loss(self, f: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch f (B, D), y (B,) in {0, 1}, at temperature tau."""
        cfg = self.cfg
        z = self._z(f)
        m = gumbel_keep_mask(self.mask_logits, f.shape[0], tau, hard=cfg.straight_through)  # (B, D)
        c, n = m * z, (1.0 - m) * z
        y = y.float()
        bce = F.binary_cross_entropy_with_logits(self.head(c).squeeze(-1), y)
        total = bce
        parts = {"bce": bce.item()}
        if cfg.hsic_weight > 0:
            hc, hn = (c @ self.hsic_proj, n @ self.hsic_proj) if self.hsic_proj is not None else (c, n)
            h = hsic(hc, hn, _bandwidth(cfg.hsic_bandwidth), cfg.hsic_kernel)
            total = total + cfg.hsic_weight * h
            parts["hsic"] = h.item()
        if cfg.noncausal_weight > 0:
            # aux head learns to read the label from n; the mask learns to leave it nothing to read.
            aux_fit = F.binary_cross_entropy_with_logits(self.aux_head(n.detach()).squeeze(-1), y)
            aux_on_n = F.linear(n, self.aux_head.weight.detach(), self.aux_head.bias.detach()).squeeze(-1)
            confuse = F.binary_cross_entropy_with_logits(aux_on_n, torch.full_like(y, 0.5))
            total = total + cfg.noncausal_weight * (aux_fit + confuse)
            parts["noncausal"] = aux_fit.item()
        if cfg.budget_weight > 0:
            keep = torch.sigmoid(self.mask_logits).mean()
            budget = (keep - cfg.keep_ratio) ** 2
            total = total + cfg.budget_weight * budget
            parts["keep"] = keep.item()
        parts["loss"] = total.item()
        return total, parts


def _bandwidth(v: str) -> str | float:
    return v if v == "median" else float(v)


def fold_mask(model: CausalCLIP) -> nn.Linear:
    """Standardisation + hard mask + head folded into one Linear(D, 1): weight w*m (/ std), the same logits
    as `model` (identical without standardisation; to float rounding with it, computed in float64)."""
    with torch.no_grad():
        return _fold_linear(model.head.weight * model.hard_mask(), model.head.bias, model.standardiser)


class LinearProbe(nn.Module):
    """UnivFD-style baseline: one linear layer on the same frozen (standardised) features. f (B, D) -> logits (B,)."""

    def __init__(self, feature_dim: int, standardise: bool = False):
        super().__init__()
        self.standardiser = FeatureStandardiser(feature_dim) if standardise else None
        self.head = nn.Linear(feature_dim, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f if self.standardiser is None else self.standardiser(f)).squeeze(-1)

    def loss(self, f: torch.Tensor, y: torch.Tensor, tau: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        bce = F.binary_cross_entropy_with_logits(self(f), y.float())
        return bce, {"bce": bce.item(), "loss": bce.item()}


METHODS = ("causal", "probe", "prompt")


def build_head(method: str, cfg: CausalCLIPConfig) -> CausalCLIP | LinearProbe:
    """The stored head of a detector run: CausalCLIP (mask + head) or one linear unit (the UnivFD linear probe,
    or a prompt-tuned head already folded: its text features are constants, toolkit/models/prompt.py)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "causal":
        return CausalCLIP(cfg)
    # the prompt head is a cosine similarity with text features: it reads the raw normalised feature
    return LinearProbe(cfg.feature_dim, standardise=cfg.standardise and method == "probe")


def fold_head(head: nn.Module) -> nn.Linear:
    """Any head -> the one Linear(D, 1) of the deployed graph (a head of another module folds itself)."""
    if isinstance(head, CausalCLIP):
        return fold_mask(head)
    if isinstance(head, LinearProbe):
        return _fold_linear(head.head.weight, head.head.bias, head.standardiser)
    return head.fold()  # the prompt head (toolkit/models/prompt.py)
