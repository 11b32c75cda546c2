"""The embedded offline benchmark that `toolkit demo` builds on a CPU in minutes.

Real images: random crops of the colour and grey photos that scikit-image ships in its wheel. Each
photo is split into disjoint vertical bands (train | val | test), so no pixel of a test crop was seen
in training. Generated images: reconstructions of other crops of the same band by the generator
families of `toolkit.data.generators`, each trained on train-band crops only.

Written in the ForenSynths layout: `<out>/<split>/<family>/{0_real,1_fake}/*.png`, plus
`benchmark.json` (config, counts, protocol). Protocol: train on one family (`train_family`), fix the
threshold on `val/<train_family>`, test on every other family in `test/`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit.data.generators import AE_FAMILIES, FAMILIES, GeneratorTrainConfig

# Photos bundled in the scikit-image wheel (no network); grey ones are replicated to RGB.
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
    "brick", "grass", "gravel", "camera", "coins", "moon", "cell", "clock", "motorcycle_left", "motorcycle_right",
)  # fmt: skip
SPLITS = ("train", "val", "test")
BANDS = {"train": (0.0, 0.6), "val": (0.6, 0.72), "test": (0.72, 1.0)}  # fraction of each photo's width


@dataclass
class EmbeddedConfig:
    crop: int = 64
    counts: dict[str, int] = field(default_factory=lambda: {"train": 300, "val": 100, "test": 200})
    families: tuple[str, ...] = FAMILIES
    train_family: str = "ae_transposed"  # the protocol's training generator (a GAN-like upsampler)
    seed: int = 0
    generator: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["families"] = list(self.families)
        return d


def load_photos() -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8) for each bundled photo."""
    import skimage.data

    out = []
    for name in PHOTOS:
        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            img = left if name.endswith("left") else right
        else:
            img = getattr(skimage.data, name)()
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        out.append((name, np.ascontiguousarray(img[..., :3]).astype(np.uint8)))
    return out


def random_crops(photos: list[tuple[str, np.ndarray]], split: str, n: int, crop: int, rng: np.random.Generator):
    """n crops (n, crop, crop, 3) uint8 from the split's band of the photos, at random scales 1 to 1/2."""
    from PIL import Image

    lo, hi = BANDS[split]
    out = np.empty((n, crop, crop, 3), dtype=np.uint8)
    for i in range(n):
        _, img = photos[rng.integers(len(photos))]
        w = img.shape[1]
        band = img[:, int(lo * w) : int(hi * w)]
        bh, bw = band.shape[:2]
        # a window of crop/scale source pixels (scale in [1/2, 1]) resized to the crop; a band narrower
        # than the crop is enlarged instead
        src = min(int(crop / rng.uniform(0.5, 1.0)), bh, bw)
        y, x = rng.integers(0, bh - src + 1), rng.integers(0, bw - src + 1)
        window = band[y : y + src, x : x + src]
        if src != crop:
            window = np.asarray(Image.fromarray(window).resize((crop, crop), Image.Resampling.LANCZOS))
        out[i] = window
    return out


def _write_pngs(arr: np.ndarray, folder: Path, prefix: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{prefix}{i:05d}.png", optimize=False)


def build_embedded_benchmark(out: str | Path, cfg: EmbeddedConfig | None = None, progress: bool = True) -> Path:
    """Build the benchmark into `out` (reused when `out/benchmark.json` matches `cfg`)."""
    import torch

    from toolkit.data.generators import (
        diffusion_reconstruct,
        from_uint8,
        to_uint8,
        train_autoencoder,
        train_diffusion,
    )
    from toolkit.io import read_json, write_json
    from toolkit.progress import progress_bar

    cfg = cfg or EmbeddedConfig()
    out = Path(out)
    meta_path = out / "benchmark.json"
    if meta_path.exists() and read_json(meta_path).get("config") == cfg.to_dict():
        return out
    unknown = set(cfg.families) - set(FAMILIES)
    if unknown or cfg.train_family not in cfg.families:
        raise ValueError(f"families must be drawn from {FAMILIES} and include train_family {cfg.train_family!r}")

    # Build beside `out`, then swap in: an interrupted build never leaves a half benchmark behind.
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(cfg.seed)
    photos = load_photos()
    real = {s: random_crops(photos, s, cfg.counts[s], cfg.crop, rng) for s in SPLITS}  # the 0_real sets
    sources = {s: random_crops(photos, s, cfg.counts[s], cfg.crop, rng) for s in SPLITS}  # what generators redraw
    train_pool = from_uint8(random_crops(photos, "train", 2000, cfg.crop, rng))
    gcfg = cfg.generator
    counts: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}

    for fam in cfg.families:
        if fam in AE_FAMILIES:
            with progress_bar(f"train {fam}", gcfg.steps, progress) as adv:
                model = train_autoencoder(fam, train_pool, gcfg, adv)

            def generate(x: torch.Tensor, split: str, model=model) -> torch.Tensor:
                with torch.no_grad():
                    return model(x)
        else:
            with progress_bar(f"train {fam}", gcfg.diffusion_steps, progress) as adv:
                unet, _ = train_diffusion(train_pool, gcfg, adv)

            def generate(x: torch.Tensor, split: str, unet=unet) -> torch.Tensor:
                return diffusion_reconstruct(unet, x, gcfg, seed=cfg.seed + SPLITS.index(split))

        total = sum(cfg.counts.values())
        with progress_bar(f"generate {fam}", total, progress) as adv:
            for split in SPLITS:
                src = from_uint8(sources[split])
                fakes = []
                for i in range(0, len(src), 64):
                    fakes.append(to_uint8(generate(src[i : i + 64], split)))
                    adv(len(fakes[-1]))
                _write_pngs(np.concatenate(fakes), tmp / split / fam / "1_fake", f"{fam}_")
                _write_pngs(real[split], tmp / split / fam / "0_real", "real_")
                counts[split][fam] = {"real": len(real[split]), "fake": cfg.counts[split]}

    write_json(
        tmp / "benchmark.json",
        {
            "config": cfg.to_dict(),
            "photos": list(PHOTOS),
            "counts": counts,
            "protocol": {
                "train": f"train/{cfg.train_family}",
                "threshold": f"val/{cfg.train_family}",
                "test": "test/",
                "unseen": [f for f in cfg.families if f != cfg.train_family],
            },
        },
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
