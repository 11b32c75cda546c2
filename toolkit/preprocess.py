"""numpy/PIL image preprocessing, bit-compatible with open_clip's eval transform.

open_clip (transform.py, `image_transform(is_train=False)`) does: torchvision Resize of the short side
(PIL bicubic), CenterCrop, convert("RGB"), ToTensor, Normalize. The same PIL calls are made here in the
same order, and the tensor steps in float32 numpy, so engines never need torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224
    mean: tuple[float, float, float] = field(default=OPENAI_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_STD)
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest (resize short side + centre crop) | squash

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(
            size=int(d["size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=d.get("interpolation", "bicubic"),
            resize_mode=d.get("resize_mode", "shortest"),
        )

    @classmethod
    def from_open_clip(cls, cfg: dict) -> PreprocessConfig:
        """From an open_clip `model.visual.preprocess_cfg` dict."""
        size = cfg["size"]
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"non-square input size {size} is not supported")
            size = size[0]
        return cls(
            size=int(size),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=cfg.get("interpolation") or "bicubic",
            resize_mode=cfg.get("resize_mode") or "shortest",
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The PIL half of the transform: resize and centre crop in the image's own mode, then RGB."""
    resample = _RESAMPLE[cfg.interpolation]
    s = cfg.size
    if cfg.resize_mode == "squash":
        img = img.resize((s, s), resample)
    else:
        # torchvision `_compute_resized_output_size` for an int size: short side -> s, long side truncated.
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(s * long / short)
        new_w, new_h = (s, new_long) if w <= h else (new_long, s)
        img = img.resize((new_w, new_h), resample)
        # torchvision `center_crop`: offsets rounded half-to-even as Python's round does.
        top = round((new_h - s) / 2.0)
        left = round((new_w - s) / 2.0)
        img = img.crop((left, top, left + s, top + s))
    return img.convert("RGB")


def to_array(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image (s, s) -> normalised float32 array (3, s, s), as ToTensor + Normalize."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # (H, W, 3)
    x = x.transpose(2, 0, 1)  # (3, H, W)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std)


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    return to_array(resize_and_crop(img, cfg), cfg)


def preprocess_batch(images: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """-> (N, 3, s, s) float32."""
    if not images:
        return np.zeros((0, 3, cfg.size, cfg.size), dtype=np.float32)
    return np.stack([preprocess(im, cfg) for im in images])


def noise_images(pre: dict, n: int, seed: int = 0) -> np.ndarray:
    """n seeded images of uniform pixels through the preprocessing's normalisation -> (n, 3, s, s) float32: inputs in
    every kind's domain when no image folder is given (bench parity, toolkit debug)."""
    size = pre["size"]
    u = np.random.default_rng(seed).uniform(0, 1, (n, 3, size, size)).astype(np.float32)
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
    return ((u - mean) / std).astype(np.float32)
