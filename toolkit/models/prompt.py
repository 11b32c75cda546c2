"""Prompt-tuned detector head (CoOp, Zhou et al. 2022), the deployable form of CoDefend's prompt defence.

Two classes, "real" and "generated", each a prompt of `n_ctx` learnable context vectors followed by the
class name ("[SOT] v_1 ... v_M real . [EOT]"), run through the frozen CLIP text tower (open_clip's own
modules, in `CLIP.encode_text`'s order). With L2-normalised image feature f (B, D) and text features
t_real, t_fake (D,), normalised:

    logit(f) = exp(s) * (<f, t_fake> - <f, t_real>)          # = log p(fake) - log p(real) of CLIP's softmax

The prompts do not depend on the image, so after training the text features are constants and the head
folds into ONE linear unit on the normalised feature: w = exp(s) (t_fake - t_real), b = 0 (`fold`). The run
stores that folded unit as its head (the same Linear(D, 1) as the linear probe), so export, gates, engines
and servers are unchanged; the context vectors and scale are kept beside it (prompt.safetensors) so the
unfolded model can be rebuilt and checked against the fold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

PROMPT_FILE = "prompt.safetensors"


@dataclass
class PromptConfig:
    n_ctx: int = 4  # learnable context vectors per prompt (CoOp's unified context, shared by both classes)
    class_names: tuple[str, str] = ("real", "generated")
    init_scale: float = math.log(1 / 0.07)  # CLIP's logit-scale init; learnt with the context
    learn_scale: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PromptConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "class_names" in known:
            known["class_names"] = tuple(known["class_names"])
        return cls(**known)


class TextTower(nn.Module):
    """The frozen text half of an open_clip CLIP: token embeddings in -> text features (pooled at EOT)."""

    def __init__(self, clip_model, tokenizer):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.pool_type = clip_model.text_pool_type
        self.eos_id = getattr(clip_model, "text_eos_id", None)
        self.tokenizer = tokenizer
        self.context_length = int(clip_model.context_length)
        self.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    def encode_embeddings(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """x (P, L, W) token embeddings (context already spliced in), tokens (P, L) ids -> (P, D) features."""
        from open_clip.transformer import text_global_pool

        x = x + self.positional_embedding.to(x.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x


def load_text_tower(backbone_cfg) -> TextTower:
    """The text tower of the same open_clip model and weights as `load_backbone(backbone_cfg)` (random
    weights are seeded the same way, so image and text towers belong to one CLIP)."""
    import open_clip

    from toolkit.models.backbone import create_clip_model

    model = create_clip_model(backbone_cfg)
    if not hasattr(model, "token_embedding"):
        raise ValueError(
            f"{backbone_cfg.name} has no CLIP text tower in open_clip's CLIP layout: --method prompt needs one"
        )
    return TextTower(model, open_clip.get_tokenizer(backbone_cfg.name))


class PromptHead(nn.Module):
    """f (B, D) L2-normalised image features -> logit (B,) = exp(s) (<f, t_fake> - <f, t_real>)."""

    def __init__(self, text: TextTower, cfg: PromptConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.text = cfg, text
        if cfg.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {cfg.n_ctx}")
        names = text.tokenizer([f"{name}." for name in cfg.class_names])  # SOT name . EOT
        need = int((names != 0).sum(dim=1).max()) + cfg.n_ctx
        if need > text.context_length:
            raise ValueError(f"{cfg.n_ctx} context tokens + the class names need {need} tokens; "
                             f"this CLIP's text context holds {text.context_length}")  # fmt: skip
        placeholder = " ".join(["X"] * cfg.n_ctx)
        tokens = text.tokenizer([f"{placeholder} {name}." for name in cfg.class_names])  # (2, L)
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            emb = text.token_embedding(tokens)  # (2, L, W)
        self.register_buffer("prefix", emb[:, :1].clone(), persistent=False)  # SOT
        self.register_buffer("suffix", emb[:, 1 + cfg.n_ctx :].clone(), persistent=False)  # class name . EOT pad
        g = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, text.width, generator=g) * 0.02)  # CoOp's init
        self.log_scale = nn.Parameter(torch.tensor(float(cfg.init_scale)), requires_grad=cfg.learn_scale)

    def train(self, mode: bool = True) -> PromptHead:
        super().train(mode)
        self.text.eval()  # frozen tower: no dropout / norm updates while the context trains
        return self

    def text_features(self) -> torch.Tensor:
        """-> (2, D) normalised features of the real / generated prompts."""
        ctx = self.ctx.unsqueeze(0).expand(len(self.cfg.class_names), -1, -1)
        x = torch.cat([self.prefix, ctx, self.suffix], dim=1)  # (2, L, W)
        return F.normalize(self.text.encode_embeddings(x, self.tokens), dim=-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        t = self.text_features()
        return self.log_scale.exp() * (f @ (t[1] - t[0]))

    def loss(self, f: torch.Tensor, y: torch.Tensor, tau: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        bce = F.binary_cross_entropy_with_logits(self(f), y.float())
        return bce, {"bce": bce.item(), "loss": bce.item(), "scale": float(self.log_scale.detach().exp())}

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The same logits as one Linear(D, 1): w = exp(s) (t_fake - t_real), b = 0."""
        t = self.text_features()
        lin = nn.Linear(t.shape[1], 1)
        lin.weight.copy_((self.log_scale.exp() * (t[1] - t[0])).unsqueeze(0))
        lin.bias.zero_()
        return lin

    def prompt_state(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach().contiguous(), "log_scale": self.log_scale.detach().reshape(1).contiguous()}

    def load_prompt_state(self, state: dict[str, torch.Tensor]) -> PromptHead:
        with torch.no_grad():
            self.ctx.copy_(state["ctx"])
            self.log_scale.copy_(state["log_scale"].reshape(()))
        return self


def load_prompt(run_dir) -> PromptHead:
    """A prompt run's unfolded head (text tower + learnt context), to check or continue it."""
    from pathlib import Path

    from safetensors.torch import load_file

    from toolkit.io import read_json
    from toolkit.models.backbone import BackboneConfig

    config = read_json(Path(run_dir) / "config.json")
    if "prompt" not in config:
        raise ValueError(f"{run_dir} is not a prompt-tuned run (trained with --method {config['train']['method']})")
    head = PromptHead(
        load_text_tower(BackboneConfig.from_dict(config["backbone"])), PromptConfig.from_dict(config["prompt"])
    )
    return head.load_prompt_state(load_file(str(Path(run_dir) / PROMPT_FILE))).eval()
