"""numpy/PIL preprocessing against open_clip's own eval transform (max abs diff <= 1e-5)."""

import numpy as np
import pytest
from PIL import Image

from toolkit.preprocess import PreprocessConfig, preprocess


def _open_clip_transform(cfg: PreprocessConfig):
    from open_clip.transform import image_transform

    return image_transform(
        cfg.size,
        is_train=False,
        mean=cfg.mean,
        std=cfg.std,
        interpolation=cfg.interpolation,
        resize_mode=cfg.resize_mode,
    )


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


def test_config_defaults_and_refusals():
    """Bugs: a default moved off open_clip's (224, OpenAI mean/std, bicubic, shortest), or a bad mode accepted."""
    from toolkit.preprocess import OPENAI_MEAN, OPENAI_STD

    cfg = PreprocessConfig()
    assert (cfg.size, cfg.interpolation, cfg.resize_mode) == (224, "bicubic", "shortest")
    assert cfg.mean == OPENAI_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert cfg.std == OPENAI_STD == (0.26862954, 0.26130258, 0.27577711)
    with pytest.raises(ValueError, match=r"interpolation must be one of \['bicubic', 'bilinear'\], got 'lanczos'"):
        PreprocessConfig(interpolation="lanczos")
    with pytest.raises(ValueError, match=r"resize_mode must be 'shortest' or 'squash', got 'longest'"):
        PreprocessConfig(resize_mode="longest")
    PreprocessConfig(interpolation="bilinear", resize_mode="squash")


def test_config_round_trips_and_reads_open_clip():
    """Bugs: a field lost or not converted on the way to or from the manifest, or open_clip's tuple size, its
    empty interpolation or resize mode misread."""
    cfg = PreprocessConfig(
        size=48, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear", resize_mode="squash"
    )
    d = cfg.to_dict()
    assert d == {
        "size": 48,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({"size": "48", "mean": [0, 0, 0], "std": [1, 1, 1]}) == PreprocessConfig(
        size=48, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    oc = {
        "size": (48, 48),
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    assert PreprocessConfig.from_open_clip(oc) == cfg
    got = PreprocessConfig.from_open_clip(
        {"size": 32, "mean": (0, 0, 0), "std": (1, 1, 1), "interpolation": None, "resize_mode": ""}
    )
    assert (got.size, got.interpolation, got.resize_mode, got.mean) == (32, "bicubic", "shortest", (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"non-square input size \[48, 32\] is not supported"):
        PreprocessConfig.from_open_clip({"size": [48, 32], "mean": (0, 0, 0), "std": (1, 1, 1)})


def test_batches_and_noise_images():
    """Bugs: an empty batch not (0, 3, s, s) float32, a batch reordered, or noise not normalised or not seeded."""
    from toolkit.preprocess import noise_images, preprocess_batch

    cfg = PreprocessConfig(size=16)
    empty = preprocess_batch([], cfg)
    assert empty.shape == (0, 3, 16, 16) and empty.dtype == np.float32
    imgs = [_image("RGB", 20, 30, seed=s) for s in (1, 2)]
    batch = preprocess_batch(imgs, cfg)
    assert batch.shape == (2, 3, 16, 16) and np.array_equal(batch[1], preprocess(imgs[1], cfg))
    pre = {"size": 8, "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 2.0]}
    x = noise_images(pre, 3, seed=4)
    u = np.random.default_rng(4).uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[:, 2], u[:, 2] / 2.0) and np.allclose(x[:, 0], (u[:, 0] - 0.5) / 0.5)
    assert np.array_equal(noise_images(pre, 3, seed=4), x) and not np.array_equal(noise_images(pre, 3), x)
    assert noise_images(pre, 2, seed=4).shape == (2, 3, 8, 8)
    assert np.array_equal(noise_images(pre, 2), noise_images(pre, 2, seed=0))  # the default seed is 0


def test_to_array_by_formula():
    """Bugs: the channel order, the 1/255 scale, or the normalisation's direction changed."""
    from toolkit.preprocess import to_array

    px = np.array([[[255, 0, 51], [0, 102, 0]]], np.uint8)  # (1, 2, 3) HWC
    cfg = PreprocessConfig(size=2, mean=(0.5, 0.0, 0.2), std=(0.5, 0.2, 0.1))
    got = to_array(Image.fromarray(px, "RGB"), cfg)
    want = (px.astype(np.float32) / 255).transpose(2, 0, 1)
    want = (want - np.array([0.5, 0.0, 0.2], np.float32)[:, None, None]) / np.array([0.5, 0.2, 0.1], np.float32)[
        :, None, None
    ]
    assert got.shape == (3, 1, 2) and got.flags["C_CONTIGUOUS"] and np.allclose(got, want, atol=1e-6)
