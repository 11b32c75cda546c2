"""Frozen open_clip image encoder: any open_clip model name + pretrained tag or local .safetensors file.

Tiny presets (`tiny-vit-32`, `tiny-vit-64`, JSON in configs/) are registered into open_clip's own
model-config registry, so tests and the demo go through the same `open_clip.create_model` path as
`ViT-L-14 --pretrained openai` (timm's "register tiny models beside the real ones").
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from toolkit.io import sha256_file
from toolkit.preprocess import PreprocessConfig

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_PRESETS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "tiny-vit-64"  # any open_clip model name, e.g. ViT-B-16, ViT-L-14, or a tiny preset
    pretrained: str | None = None  # open_clip tag (openai, laion2b_s34b_b88k, ...), a .safetensors file, or None
    seed: int = 0  # initialisation seed when `pretrained` is None (random weights, for tests / timing)
    cache_dir: str | None = None  # open_clip's download cache

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        return cls(**{k: d[k] for k in ("name", "pretrained", "seed", "cache_dir") if k in d})


@functools.cache
def register_presets() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def _weights_identity(cfg: BackboneConfig) -> str:
    if cfg.pretrained is None:
        return f"random-seed{cfg.seed}"
    p = Path(cfg.pretrained)
    if p.is_file():
        return f"file-sha256:{sha256_file(p)}"
    return f"tag:{cfg.pretrained}"


class ClipBackbone(nn.Module):
    """images (B, 3, S, S), normalised as `preprocess_cfg` says -> L2-normalised features (B, D)."""

    def __init__(self, visual: nn.Module, preprocess_cfg: PreprocessConfig, config: BackboneConfig, identity: str):
        super().__init__()
        self.visual = visual
        self.preprocess_cfg = preprocess_cfg
        self.config = config
        self.identity = identity  # name + weights, the feature-cache key part for this encoder
        self.feature_dim = int(getattr(visual, "output_dim", 0) or self._probe_dim())
        self.requires_grad_(False)
        self.eval()

    def _probe_dim(self) -> int:
        s = self.preprocess_cfg.size
        with torch.no_grad():
            return int(self.visual(torch.zeros(1, 3, s, s)).shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.visual(images)  # (B, D)
        return nn.functional.normalize(f, dim=-1)


def random_weights_warning(cfg: BackboneConfig) -> str | None:
    """A line for the user when a real CLIP architecture is asked for without weights: open_clip then initialises
    it randomly, its features carry no meaning, and everything downstream still runs (tiny presets are random by
    design)."""
    if cfg.pretrained is not None or cfg.name in TINY_PRESETS:
        return None
    return (
        f"{cfg.name} has random weights (seed {cfg.seed}): no --pretrained was given. Its features mean nothing; "
        f"fine for timing and tests. For a real detector pass --pretrained openai (needs the download) or a local "
        f".safetensors file."
    )


def load_backbone(cfg: BackboneConfig) -> ClipBackbone:
    """Build the frozen image encoder through open_clip's own factory and loader."""
    model = create_clip_model(cfg)
    preprocess_cfg = PreprocessConfig.from_open_clip(model.visual.preprocess_cfg)
    identity = f"{cfg.name}|{_weights_identity(cfg)}"
    return ClipBackbone(model.visual, preprocess_cfg, cfg, identity)


def create_clip_model(cfg: BackboneConfig):
    """The whole open_clip model of `cfg` (checked name and weights; random weights seeded by cfg.seed, so
    every call builds the same model): the image tower for `load_backbone`, the text tower for prompts."""
    import open_clip

    register_presets()
    if cfg.name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP model {cfg.name!r}; choose an open_clip model (e.g. ViT-B-16, ViT-L-14) "
            f"or a tiny preset ({', '.join(TINY_PRESETS)})"
        )
    pretrained = cfg.pretrained
    if pretrained is not None and (Path(pretrained).suffix or Path(pretrained).exists()):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path}: only .safetensors checkpoints are loaded (pickled {path.suffix} files can run code); "
                "convert it with safetensors.torch.save_file(state_dict, 'model.safetensors')"
            )
    elif pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        if pretrained not in tags:
            raise ValueError(f"{cfg.name} has no pretrained tag {pretrained!r}; known tags: {tags or 'none'}")

    if pretrained is None:
        torch.manual_seed(cfg.seed)
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": here that is the request
    try:
        model = open_clip.create_model(cfg.name, pretrained=pretrained, cache_dir=cfg.cache_dir)
    except RuntimeError as e:
        if pretrained is not None and "download" in str(e).lower():
            raise RuntimeError(
                f"could not get weights {cfg.name}/{pretrained}: {e}. This machine may be offline: "
                "fill open_clip's cache (--cache-dir) or pass a local .safetensors file"
            ) from None
        raise
    except Exception as e:  # open_clip reports shape mismatches etc. from torch's load_state_dict
        if pretrained is not None:
            raise ValueError(f"{pretrained}: does not match CLIP model {cfg.name}: {e}") from None
        raise
    finally:
        logging.disable(logging.NOTSET)
    return model


def save_open_clip_checkpoint(name: str, path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised open_clip model of `name` as a .safetensors checkpoint.

    Used by tests and the demo to exercise the local-checkpoint path of `load_backbone` offline.
    """
    import open_clip
    from safetensors.torch import save_file

    from toolkit.io import atomic_path

    register_presets()
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    return path
