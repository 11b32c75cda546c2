"""The purifier kind (after CoDefend): run format, the deployed student, its export spec and parity.

Run directory (`toolkit train purifier`): `teacher.safetensors`, `student.safetensors`,
`diffpure.safetensors`, `noised.safetensors` (runs before the noised student lack it) + `config.json`.
Deployed graph: the noised student (`NoisedStudent`: noise to t*, `noised_calls` UNet calls, DDIM between
them, one graph), or in a run without one the one-step student; input `images` (N,3,H,W) in [0, 1], output
`purified` (N,3,H,W) in [0, 1].

The deployed noised student's noise is a constant of the graph, drawn once from `noise_seed` (recorded in
the manifest's model_config), not an ONNX random op: every engine (PyTorch, onnxruntime, OpenVINO, TensorRT)
then computes the same function, so the fp32/fp16 gates compare it pixel for pixel as they do any graph, and
a purified file is reproducible. What a fixed noise gives up: an attacker who knows it attacks a deterministic
function; with fresh noise per call an adaptive attacker averages over draws (EOT), which costs them more
queries but, through a differentiable student, not much robustness (the purifier table shows both rows).

Gates: fp32 max |pixel diff| <= 1e-4; fp16 PSNR against PyTorch >= 40 dB. fp16 keeps the normalisation
layers (GroupNorm and the ops it lowers to) in fp32.
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
NETS = ("teacher", "student", "diffpure", "noised")  # noised: only where config's noised_calls > 0
WEIGHTS = "student.safetensors"


def save_run(run_dir: str | Path, nets: dict, config: dict) -> Path:
    """Write the three UNets (safetensors) and config.json (with `format`) atomically."""
    from safetensors.torch import save_file

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (n for n in NETS if n in nets):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in nets[name].state_dict().items()}, str(tmp))
    write_json(out / "config.json", {"format": FORMAT, **config})
    return out


def load_run(run_dir: str | Path) -> tuple[dict, object]:
    """-> ({teacher, student, diffpure[, noised]: UNet in eval mode}, PurifierConfig)."""
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
    for name in NETS if cfg.noised_calls > 0 else NETS[:-1]:
        net = make_unet(cfg)
        try:
            net.load_state_dict(load_file(str(d / f"{name}.safetensors")))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{d / f'{name}.safetensors'}: not loadable into the configured UNet ({e})") from None
        nets[name] = net.eval().requires_grad_(False)
    return nets, cfg


def deployed(nets: dict, cfg):
    """The student a run deploys (images in [0, 1] -> purified images): its noised student with the fixed
    noise, or in a run without one its one-step student."""
    from toolkit.models.purifier import NoisedStudent, OneStepPurifier

    net = NoisedStudent(nets["noised"], cfg) if cfg.noised_calls > 0 else OneStepPurifier(nets["student"])
    return net.eval().requires_grad_(False)


def deployed_name(cfg) -> str:
    """The deployed student's row name in the purifier tables."""
    if cfg.noised_calls > 0:
        calls = f"{cfg.noised_calls} call{'s' if cfg.noised_calls > 1 else ''}"
        return f"noised student ({calls}, fixed noise: deployed)"
    return "student (1 step)"


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
        return deployed(*load_run(run_dir))

    def parity(self, ref: dict, got: dict, threshold: float | None = None, labels=None, refit: bool = False,
               got_threshold: float | None = None) -> dict:  # fmt: skip
        return image_parity(ref, got)

    def export_spec(self, run_dir: Path, verify_images: Path | None = None, verify_n: int = 17, seed: int = 0):
        import torch

        nets, cfg = load_run(run_dir)  # the UNets are read once: the deployed student is the graph
        s = cfg.sample_size
        x = np.random.default_rng(seed).uniform(0, 1, (max(verify_n, 10), 3, s, s)).astype(np.float32)
        pre = {"size": s, "mean": [0.0] * 3, "std": [1.0] * 3, "interpolation": "bicubic", "resize_mode": "shortest"}
        return ExportSpec(
            module=deployed(nets, cfg),
            example=torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(seed)),
            verify_feeds=[x[:1], x[1:9], x[9:]],
            manifest={
                "model_config": cfg.to_dict(),
                "model_name": f"purifier UNet {list(cfg.block_out_channels)} @ {s} px, {deployed_name(cfg)}",
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
