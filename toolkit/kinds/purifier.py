"""The purifier kind (after CoDefend): run format, the deployed one-step student, its export spec and parity.

Run directory (`toolkit train purifier`): `teacher.safetensors`, `student.safetensors`,
`diffpure.safetensors` + `config.json`. Deployed graph: the one-step student, input `images` (N,3,H,W)
in [0, 1], output `purified` (N,3,H,W) in [0, 1]. Gates: fp32 max |pixel diff| <= 1e-4; fp16 PSNR
against PyTorch >= 40 dB. fp16 keeps the normalisation layers (GroupNorm and the ops it lowers to) in fp32.
No int8: its gate is a detection AUC, which an image-to-image model does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from toolkit.compare import ImageFp16Gate, ImageFp32Gate
from toolkit.io import atomic_path, read_json, write_json
from toolkit.kinds.base import Capabilities, ExportSpec, ModelKind

FORMAT = "causal-deploy-toolkit/purifier@2"  # @2: skip (residual) x0 parametrisation
NETS = ("teacher", "student", "diffpure")
WEIGHTS = "student.safetensors"


def save_run(run_dir: str | Path, nets: dict, config: dict) -> Path:
    """Write the three UNets (safetensors) and config.json (with `format`) atomically."""
    from safetensors.torch import save_file

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in NETS:
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in nets[name].state_dict().items()}, str(tmp))
    write_json(out / "config.json", {"format": FORMAT, **config})
    return out


def load_run(run_dir: str | Path) -> tuple[dict, object]:
    """-> ({teacher, student, diffpure: UNet in eval mode}, PurifierConfig)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from toolkit.models.purifier import PurifierConfig, make_unet

    d = Path(run_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} has no config.json; train one with 'toolkit train purifier'")
    config = read_json(d / "config.json")
    if config.get("format") != FORMAT:
        raise ValueError(f"{d / 'config.json'} is not a purifier run (format {config.get('format')!r}, want {FORMAT})")
    cfg = PurifierConfig.from_dict(config["purifier"])
    nets = {}
    for name in NETS:
        net = make_unet(cfg)
        try:
            net.load_state_dict(load_file(str(d / f"{name}.safetensors")))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{d / f'{name}.safetensors'}: not loadable into the configured UNet ({e})") from None
        nets[name] = net.eval().requires_grad_(False)
    return nets, cfg


def _deployed(nets: dict):
    """The one-step student, as deployed (images in [0, 1] -> purified images)."""
    from toolkit.models.purifier import OneStepPurifier

    return OneStepPurifier(nets["student"]).eval().requires_grad_(False)


def image_parity(ref: dict, got: dict, name: str = "purified") -> dict:
    r, g = ref[name].astype(np.float64), got[name].astype(np.float64)
    mse = ((r - g) ** 2).reshape(len(r), -1).mean(1)
    psnr = np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-20)), np.inf)
    return {
        "max_abs_pixel": float(np.abs(r - g).max()),
        "min_psnr_db": float(psnr.min()),
        "mean_psnr_db": float(np.mean(np.minimum(psnr, 200.0))),
        "n": len(r),
    }


class PurifierKind(ModelKind):
    name = "purifier"
    run_format = FORMAT
    weights_file = WEIGHTS
    output_names = ("purified",)
    capabilities = Capabilities(
        detects=False,
        purifies=True,
        int8="int8 is gated on detection AUC, which an image-to-image purifier does not have (it has fp32 and fp16)",
        trt=True,
    )
    gate_types: ClassVar[dict] = {"fp32": ImageFp32Gate, "fp16": ImageFp16Gate}
    parity_columns = (
        ("max_abs_pixel", "max |Δpixel|"),
        ("min_psnr_db", "min PSNR dB"),
        ("mean_psnr_db", "mean PSNR dB"),
    )

    def load_reference(self, run_dir: Path):
        return _deployed(load_run(run_dir)[0])

    def parity(self, ref: dict, got: dict, threshold: float | None = None, labels=None, refit: bool = False,
               got_threshold: float | None = None) -> dict:  # fmt: skip
        return image_parity(ref, got)

    def export_spec(self, run_dir: Path, verify_images: Path | None = None, verify_n: int = 17, seed: int = 0):
        import torch

        nets, cfg = load_run(run_dir)  # the three UNets are read once: the student is the deployed graph
        s = cfg.sample_size
        x = np.random.default_rng(seed).uniform(0, 1, (max(verify_n, 10), 3, s, s)).astype(np.float32)
        pre = {"size": s, "mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bicubic", "resize_mode": "shortest"}
        return ExportSpec(
            module=_deployed(nets),
            example=torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(seed)),
            verify_feeds=[x[:1], x[1:9], x[9:]],
            manifest={
                "model_config": cfg.to_dict(),
                "model_name": f"purifier UNet {list(cfg.block_out_channels)} @ {s} px",
                "preprocess": pre,
                "verify_source": f"seeded uniform noise (seed {seed})",
            },
            fp16_keep_ops=(
                "GroupNormalization",
                "InstanceNormalization",
                "LayerNormalization",
                "Softmax",
                "ReduceMean",
                "Sqrt",
                "Pow",
            ),
            fp16_tail_after=None,
        )


KIND = PurifierKind()
