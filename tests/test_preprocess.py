"""numpy/PIL preprocessing against open_clip's own eval transform (max abs diff <= 1e-5)."""

import numpy as np
import pytest
from PIL import Image

from toolkit.preprocess import PreprocessConfig, preprocess


def _open_clip_transform(cfg: PreprocessConfig):
    from open_clip.transform import image_transform

    return image_transform(cfg.size, is_train=False, mean=cfg.mean, std=cfg.std,
                           interpolation=cfg.interpolation, resize_mode=cfg.resize_mode)  # fmt: skip


def _image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        return img.convert("RGB").quantize(64)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "LA", "I;16"])
@pytest.mark.parametrize("size", [(224, 224), (37, 91), (640, 301), (1, 5), (300, 300)])
def test_matches_open_clip(mode, size):
    cfg = PreprocessConfig(size=64)
    img = _image(mode, *size, seed=hash((mode, size)) % 1000)
    ref = _open_clip_transform(cfg)(img).numpy()
    ours = preprocess(img, cfg)
    assert ours.shape == ref.shape == (3, 64, 64) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("interp,mode", [("bilinear", "shortest"), ("bicubic", "squash")])
def test_other_modes_match(interp, mode):
    cfg = PreprocessConfig(size=48, interpolation=interp, resize_mode=mode)
    img = _image("RGB", 123, 77, seed=1)
    assert np.abs(preprocess(img, cfg) - _open_clip_transform(cfg)(img).numpy()).max() <= 1e-5


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(interpolation="lanczos")
